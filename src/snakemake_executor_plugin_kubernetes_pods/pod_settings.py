"""Pod settings that Snakemake's Kubernetes executor (0.5.1) cannot express, merged into its Jobs.

GPU training on a shared cluster needs more than the upstream plugin writes into a Job: a
memory-backed /dev/shm (PyTorch data loaders pass batches through it, and Docker's default is
64 MB), a way onto the right GPU (the cluster's GPU resource name, such as NRP Nautilus'
`nvidia.com/a100`, node affinity on product and CUDA-driver labels, a priority class),
tolerations for the cluster's taints, image pull secrets for a private registry, labels to find a
run's pods and a deadline. The executor plugin `snakemake_executor_plugin_kubernetes_pods`
builds each Job with the upstream code and passes the manifest through `apply_pod_settings`
before it is submitted.

Cluster-wide settings come from a YAML file named in the profile (see docs/kubernetes.md): what
every pod gets, what pods without a GPU get (on a GPU cluster: node affinity that keeps them off
GPU nodes), what GPU pods get, named GPU classes (a larger card, say) and which models need which
class. Per-rule ones are Snakemake resources (`shm_mb`, `runtime`, `gpu_class`), so they sit with
the other per-rule resources in the profile's `set-resources`.
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nadir.core.errors import InputError

SHM_VOLUME = "dshm"
CONTAINER_NAME = "snakemake"
RULE_LABEL = "snakemake-rule"
RUN_LABEL = "snakemake-run"
# Which job a Job runs (a hash of its outputs: the same in every controller of a run), and a hash
# of its command without the attempt: how a restarted controller recognises the Jobs it adopts.
JOB_LABEL = "snakemake-job"
COMMAND_ANNOTATION = "nadir/command-sha256"
# Snakemake's source archive as a job's command names it: `<prefix>/snakemake-workflow-sources.
# <checksum>.tar.xz <checksum>`.
SOURCE_ARCHIVE = re.compile(r"\S*snakemake-workflow-sources\.[0-9a-f]+\.tar\.xz [0-9a-f]+")

# Field of the settings file -> its type. All but `gpuResource` are named as in the pod spec
# (labels go to the metadata); `gpuResource` is the extended resource a GPU is requested as.
POD_FIELDS: dict[str, type] = {
    "labels": dict,
    "nodeSelector": dict,
    "affinity": dict,
    "tolerations": list,
    "imagePullSecrets": list,
    "priorityClassName": str,
    "gpuResource": str,
}
SCOPES = {
    "all": "every pod",
    "cpu": "pods of jobs that request no GPU, on top of `all`",
    "gpu": "pods of jobs that request a GPU (resource `gpu`), on top of `all`",
    "gpu_classes": "named GPU settings (a larger card, ...), on top of `gpu`, chosen per rule by "
                   "the resource `gpu_class` or per model by `models`",
    "models": "model name -> GPU class, for jobs with a `model` wildcard",
}
# GPU resource names the upstream executor writes (by `gpu_manufacturer`).
UPSTREAM_GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")
# Environment of every pod: Python output unbuffered, and `python -m nadir` copies what it writes
# to its log file onto the pod's stdout (nadir.core.log_tee), so `kubectl logs -f` shows progress.
POD_ENVIRONMENT = {"PYTHONUNBUFFERED": "1", "NADIR_TEE_STDERR": "1"}
# What pods without a GPU see of a node's GPUs: nothing. The NVIDIA container runtime reads the
# variable ("void": no GPU and no driver libraries); images built for CUDA often set it to "all",
# which shows a pod every GPU of the node whether it asked for one or not.
NO_GPU_ENVIRONMENT = {"NVIDIA_VISIBLE_DEVICES": "void"}
# A pod stopped from outside (preempted by the scheduler, evicted, its node drained) gets the
# DisruptionTarget condition; this rule makes the Job's failure say so, even once the pod is
# deleted, instead of an exit code 143 (SIGTERM).
POD_FAILURE_POLICY = {"rules": [{"action": "FailJob",
                                 "onPodConditions": [{"type": "DisruptionTarget",
                                                      "status": "True"}]}]}
# Where Snakemake's S3 plugin reads its endpoint (the upstream executor passes it to pods in the
# run's Secret, like the keys).
S3_ENDPOINT_VARIABLE = "SNAKEMAKE_STORAGE_S3_ENDPOINT_URL"


@dataclass(frozen=True)
class PodSettings:
    """Settings for one pod, in the field names and shapes of the Kubernetes pod spec."""

    labels: dict[str, str] = field(default_factory=dict)
    nodeSelector: dict[str, str] = field(default_factory=dict)
    affinity: dict[str, Any] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    imagePullSecrets: list[dict[str, str]] = field(default_factory=list)
    priorityClassName: str = ""
    gpuResource: str = ""

    def merged(self, more: PodSettings) -> PodSettings:
        """`more` on top of these: maps are updated key by key, lists are appended to, a text
        (priority class, GPU resource) is replaced when `more` sets one.

        Affinity is replaced per kind (nodeAffinity, podAffinity, podAntiAffinity), because a
        deep merge of selector terms would change their meaning (terms are ORed).
        """
        return PodSettings(**{name: _combined(getattr(self, name), getattr(more, name))
                              for name in POD_FIELDS})


def _combined(base: dict | list | str, more: dict | list | str) -> dict | list | str:
    """The one merge rule of pod settings: maps updated key by key, lists appended to, texts
    replaced."""
    if isinstance(base, str):
        return more or base
    return {**base, **more} if isinstance(base, dict) else [*base, *more]


@dataclass(frozen=True)
class ClusterPodSettings:
    """The settings file: what every pod gets, what pods without and with a GPU get in
    addition, GPU classes."""

    every_pod: PodSettings = field(default_factory=PodSettings)
    cpu_pods: PodSettings = field(default_factory=PodSettings)
    gpu_pods: PodSettings = field(default_factory=PodSettings)
    gpu_classes: dict[str, PodSettings] = field(default_factory=dict)
    model_classes: dict[str, str] = field(default_factory=dict)

    def gpu_class(self, rule_class: str | None, model: str | None) -> str | None:
        """The GPU class of a job: its model's (`models`) before its rule's (`gpu_class`).

        `model` is the job's `model` wildcard, a run name: a sweep cell or a repeat
        (`<model>--lr-0.001`, `<model>--repeat-2`) runs on its model's class.
        """
        model_name = (model or "").split("--")[0]
        return self.model_classes.get(model_name) or rule_class or None

    def for_job(self, requests_gpu: bool, gpu_class: str | None = None) -> PodSettings:
        """Settings of one pod; a GPU class applies only to a job that requests a GPU."""
        if not requests_gpu:
            return self.every_pod.merged(self.cpu_pods)
        settings = self.every_pod.merged(self.gpu_pods)
        if gpu_class is None:
            return settings
        if gpu_class not in self.gpu_classes:
            raise KeyError(f"GPU class {gpu_class!r} is not in the pod settings' `gpu_classes` "
                           f"(known: {sorted(self.gpu_classes)})")
        return settings.merged(self.gpu_classes[gpu_class])


def _scope_settings(path: Path, scope: str, raw: Any) -> PodSettings:
    if raw is None:
        return PodSettings()
    if not isinstance(raw, dict):
        raise InputError(path, f"`{scope}` must be a mapping of pod settings, got {raw!r}")
    unknown = sorted(set(raw) - set(POD_FIELDS))
    if unknown:
        raise InputError(path, f"`{scope}` has unknown key(s) {unknown}; allowed keys: "
                               f"{sorted(POD_FIELDS)}")
    values = {}
    for name, value in raw.items():
        expected = POD_FIELDS[name]
        if not isinstance(value, expected):
            raise InputError(path, f"`{scope}.{name}` must be a {expected.__name__} "
                                   f"(as in a Kubernetes pod spec), got {value!r}")
        values[name] = copy.deepcopy(value)
    if "gpuResource" in values and "/" not in values["gpuResource"]:
        raise InputError(path, f"`{scope}.gpuResource` must be an extended resource name such as "
                               f"nvidia.com/gpu or nvidia.com/a100, got {values['gpuResource']!r}")
    for name in ("labels", "nodeSelector"):
        for key, value in values.get(name, {}).items():
            if not isinstance(value, str):
                raise InputError(path, f"`{scope}.{name}.{key}` must be a string (quote it in "
                                       f"YAML), got {value!r}")
    pull_secrets = values.get("imagePullSecrets", [])
    for n, entry in enumerate(pull_secrets):
        if isinstance(entry, str):  # a bare secret name is the common case
            pull_secrets[n] = {"name": entry}
        elif not (isinstance(entry, dict) and isinstance(entry.get("name"), str)):
            raise InputError(path, f"`{scope}.imagePullSecrets[{n}]` must be a secret name or "
                                   f"{{name: SECRET}}, got {entry!r}")
    return PodSettings(**values)


def load_pod_settings(path: str | Path) -> ClusterPodSettings:
    """Read and check the pod settings file; errors name the file and the offending key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise InputError(path, f"cannot read the pod settings file: {error.strerror}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise InputError(path, f"not valid YAML: {getattr(error, 'problem', error)}",
                         line=mark.line + 1 if mark else None) from None
    if raw is None:
        return ClusterPodSettings()
    if not isinstance(raw, dict):
        raise InputError(path, "expected a mapping with the keys " + ", ".join(SCOPES))
    unknown = sorted(set(raw) - set(SCOPES))
    if unknown:
        raise InputError(path, f"unknown top-level key(s) {unknown}; allowed: "
                               + "; ".join(f"`{k}` ({v})" for k, v in SCOPES.items()))
    classes = raw.get("gpu_classes") or {}
    models = raw.get("models") or {}
    for key, value in (("gpu_classes", classes), ("models", models)):
        if not isinstance(value, dict):
            raise InputError(path, f"`{key}` must be a mapping, got {value!r}")
    for model, name in models.items():
        if name not in classes:
            raise InputError(path, f"`models.{model}` names GPU class {name!r}, which is not in "
                                   f"`gpu_classes` (known: {sorted(classes)})")
    return ClusterPodSettings(
        every_pod=_scope_settings(path, "all", raw.get("all")),
        cpu_pods=_scope_settings(path, "cpu", raw.get("cpu")),
        gpu_pods=_scope_settings(path, "gpu", raw.get("gpu")),
        gpu_classes={name: _scope_settings(path, f"gpu_classes.{name}", value)
                     for name, value in classes.items()},
        model_classes={str(model): str(name) for model, name in models.items()})


def label_value(text: str) -> str:
    """`text` made a valid label value: at most 63 of [A-Za-z0-9_.-], alphanumeric at both ends."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "-" for c in text)
    return cleaned[:63].strip("_.-")


def command_fingerprint(command: str, sources_digest: str) -> str:
    """A hash of a job's command (the executor's `sh -c` argument) without its attempt number,
    and of the sources it runs: equal for two Jobs of the same job with the same code, config
    and settings.

    The command names Snakemake's source archive by a checksum that follows the files' times
    (a fresh clone changes it), so the archive's name is left out and `sources_digest`, a hash
    of the sources' contents, stands for it. Its words are compared in sorted order: Snakemake
    writes some options' values from sets, in an order that changes from one process to the
    next (`--rerun-triggers`).
    """
    command = re.sub(r"--attempt \d+", "", SOURCE_ARCHIVE.sub("", command))
    words = " ".join(sorted(command.split()))
    return hashlib.sha256(f"{words}\n{sources_digest}".encode()).hexdigest()


def apply_pod_settings(job: dict[str, Any], settings: PodSettings, *, rule: str, run_id: str,
                       job_key: str | None = None, fingerprint: str | None = None,
                       requests_gpu: bool = False,
                       image: str | None = None, shm_mb: int | None = None,
                       deadline_s: int | None = None,
                       s3_endpoint: str | None = None) -> dict[str, Any]:
    """A copy of a batch/v1 Job manifest (JSON form) with the pod settings merged in.

    The Job and its pods are labelled with the rule, the run (`kubectl get pods -l
    snakemake-run=...`) and the job (`job_key`), and the Job is annotated with its command's
    `fingerprint` (command_fingerprint); a GPU requested under the upstream name
    (nvidia.com/gpu) is requested under `gpuResource` instead, with a limit equal to the
    request; a pod without a GPU runs `image` (when given: an image without CUDA) and sees no
    GPU of its node; `shm_mb` mounts a
    memory-backed emptyDir of that size at /dev/shm (it counts against the container's memory
    limit, so `mem_mb` must include it);
    `deadline_s` becomes the Job's activeDeadlineSeconds; `s3_endpoint` replaces the S3 endpoint
    the controller uses (pods inside a cluster reach S3 at another address than a controller
    outside it). The container gets POD_ENVIRONMENT; the Job POD_FAILURE_POLICY.
    """
    job = copy.deepcopy(job)
    labels = {**settings.labels, RULE_LABEL: label_value(rule), RUN_LABEL: label_value(run_id),
              **({JOB_LABEL: label_value(job_key)} if job_key else {})}
    job.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
    template = job["spec"]["template"]
    template.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
    pod = template["spec"]
    for name, kind in POD_FIELDS.items():
        value = getattr(settings, name)
        if name not in ("labels", "gpuResource") and value:
            pod[name] = _combined(pod.get(name) or kind(), copy.deepcopy(value))
    container = next(c for c in pod["containers"] if c["name"] == CONTAINER_NAME)
    resources = container.setdefault("resources", {})
    if settings.gpuResource:
        for amounts in resources.values():
            for upstream in UPSTREAM_GPU_RESOURCES:
                if amounts and upstream in amounts:
                    amounts[settings.gpuResource] = amounts.pop(upstream)
    # A GPU (any extended resource) must have a limit equal to its request, or the API server
    # refuses the Job; upstream writes limits only with `scale: 0`.
    extended = {k: v for k, v in (resources.get("requests") or {}).items() if "/" in k}
    if extended:
        resources["limits"] = {**(resources.get("limits") or {}), **extended}
    if image and not requests_gpu:
        container["image"] = image
    added = {**POD_ENVIRONMENT, **({} if requests_gpu else NO_GPU_ENVIRONMENT),
             **({S3_ENDPOINT_VARIABLE: s3_endpoint} if s3_endpoint else {})}
    kept = [e for e in container.get("env") or [] if e["name"] not in added]
    container["env"] = [*kept, *({"name": k, "value": v} for k, v in added.items())]
    if shm_mb:
        pod.setdefault("volumes", []).append(
            {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": f"{int(shm_mb)}M"}})
        container.setdefault("volumeMounts", []).append(
            {"name": SHM_VOLUME, "mountPath": "/dev/shm"})  # noqa: S108 - a mount point
    if deadline_s:
        job["spec"]["activeDeadlineSeconds"] = int(deadline_s)
    job["spec"]["podFailurePolicy"] = copy.deepcopy(POD_FAILURE_POLICY)
    if fingerprint:
        job["metadata"].setdefault("annotations", {})[COMMAND_ANNOTATION] = fingerprint
    return job


"""A test double of the Kubernetes API: the calls Snakemake's Kubernetes executor makes, for real.

It serves, over HTTP on 127.0.0.1 with a kubeconfig pointing at it (bearer token enforced):
Secrets create, replace, list by label, delete; Jobs create, list by label, read status, delete;
pods list by label selector, delete, read log; events list. It is strict where a cluster is
strict and runs what a cluster would run:

- every Secret and Job is validated against the real Kubernetes JSON schema of the configured
  version (PyPI `kubernetes-validate`, strict: unknown fields are refused, where a real server
  would drop them with a warning) plus the server-side rules that bite this project: name and
  label syntax, resource quantities, extended resources (GPUs) needing limits equal to requests,
  volume mounts naming a volume, restartPolicy (Never with a pod failure policy). Invalid objects
  get a 422 Status naming the field, as from an API server; a duplicate name gets 409.
- `role`: RBAC. With a Role (`role_from_manifests`: the one shipped in
  profiles/nautilus/controller.yaml), a request the Role does not allow (verb, API group,
  resource or subresource such as `jobs/status`) gets 403 in the API server's words.
- each Job starts one pod that runs the container's command and args (the executor's `sh -c`)
  in a fresh empty directory standing for the container's working directory, with only the
  environment the pod spec gives it (Secret references resolved) plus what an image and a
  container runtime provide: PATH (the test venv's bin first, standing for the image's
  Python), PYTHONPATH=src (nadir from the deployed sources, never an installed copy), and a
  fresh HOME and TMPDIR per pod. A rule that relies on a shared filesystem or an
  undeclared file fails here as on a cluster.
- pod status, the Job's status (with its pod failure policy) and the pod log are reported
  through the same API; a log with `previous=true` is refused as the kubelet refuses it for a
  container that never restarted.
- every manifest received (valid or not) is kept for assertions, and a test can kill a running
  pod (exit code 137: OOMKilled, or Evicted with the pod's reason and message, as a node reports
  them) or have the scheduler preempt it (`preempt`: the DisruptionTarget condition, SIGTERM's
  exit code 143, a `Preempted` event, the pod deleted). activeDeadlineSeconds is enforced, and
  so is a container's ephemeral-storage limit, as the kubelet's eviction manager does: the
  pod's files (its working directory, HOME, TMPDIR and log) are measured every 0.5 s, their
  peak kept (`Pod.disk_peak`), and a container above its limit is killed and its pod Evicted
  with the kubelet's message (`Container NAME exceeded its local ephemeral storage limit
  "LIMIT". `).

What a test can switch on, each failing the way a cluster fails, with the same API objects:

- `nodes`: a scheduler. A pod goes to the first node whose labels match its nodeSelector and
  required node affinity (In, NotIn, Exists, DoesNotExist, Gt, Lt), whose taints it tolerates and
  whose allocatable resources (ephemeral storage included) cover its requests (not reduced by
  other pods); otherwise it stays Pending with PodScheduled=False/Unschedulable and a
  FailedScheduling event that counts the reasons, as kube-scheduler words them. Without nodes
  every pod runs.
- pod admission, when the Job controller creates the pod (the Job exists; refusals are
  FailedCreate events on it, and the Job has no pod): `priority_classes` (an unknown
  priorityClassName is refused), `limit_range` (a container limit above the maximum),
  `pod_webhooks` (validating webhooks that deny), `quotas` (ResourceQuotas, optionally scoped by
  priority class; `quota` is the one plain `nadir-quota`).
- `policy`: an admission policy on Jobs (NautilusPolicy: limits within a ratio of requests,
  offered GPU resource names, no `sleep infinity`); a Job it refuses gets 403 from the API.
- `stuck_creating`: pods with a label stay in ContainerCreating with a Warning event (a volume
  that does not mount, a sandbox that is not made).
- `unpullable_images`: the pod waits in ErrImagePull, with the kubelet's message and event.
- `inject_faults`: the next matching requests answer 429/500/..., drop the connection or hang.
- `nautilus_namespace()`: the options that make a fresh NRP Nautilus namespace, from
  NAUTILUS_FACTS (each fact with the nrp.ai page it comes from).

What it does not do: images (the pod runs with the test venv whatever the image), volumes (an
emptyDir at /dev/shm is validated and recorded, not mounted), resource accounting on nodes (so
no eviction for a node's disk pressure, which `kill` stands for), the
Job controller's retries of a refused pod (a refusal that could clear stays until the executor's
timeout).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import kubernetes_validate
import yaml

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))"
                      r"(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+)?$")
UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
         "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
# Resources the kubelet may overcommit; anything else (nvidia.com/gpu, ...) needs limits.
OVERCOMMITABLE = {"cpu", "memory", "ephemeral-storage"}

# What the double takes from NRP Nautilus, each with the page it comes from. Pages read again for
# issue 26 (2026-12-07) are marked "read"; the others are as DESIGN.md sections 8 and 9 record
# them (this session's stored copy of nrp.ai lacks those pages).
NRP = "https://nrp.ai/documentation/userdocs"
POLICIES = "https://nationalresearchplatform.org/documentation/userdocs/start/policies"


@dataclass(frozen=True)
class Fact:
    value: Any
    source: str


NAUTILUS_FACTS: dict[str, Fact] = {
    # limits must be within 20 % of requests; equal while running more than ~100 jobs
    "limit_ratio": Fact(1.2, f"{POLICIES} (read)"),
    # "Using sleep infinity in Jobs is not allowed"
    "banned_in_jobs": Fact("sleep infinity", f"{POLICIES} (read)"),
    # GPUs requested under the generic name (chosen by product label) or the families' own names
    "ungated_gpu_resources": Fact(("nvidia.com/gpu", "nvidia.com/a40", "nvidia.com/rtxa6000"),
                                  f"{NRP}/running/gpu-pods/ (DESIGN.md 8, 9)"),
    # each namespace starts with a quota of zero for these; a request form raises it
    "gated_gpu_resources": Fact(("nvidia.com/a100", "nvidia.com/h100", "nvidia.com/h200",
                                 "nvidia.com/gh200"), f"{NRP}/running/gpu-pods/ (DESIGN.md 9)"),
    # the classes user pods may set; every other one is refused by quota
    "allowed_priority_classes": Fact(("armada-default", "owner-no-preempt", "opportunistic2",
                                      "opportunistic"), f"{NRP}/running/priority-classes (read)"),
    # existing classes users may not set (examples the page lists; system-* stands for several)
    "banned_priority_classes": Fact(("default", "owner", "nice", "batch-low",
                                     "system-cluster-critical", "system-node-critical"),
                                    f"{NRP}/running/priority-classes (read)"),
    # the refusal of a banned class: `exceeded quota: high-priority-ban or low-priority-ban`
    "priority_ban_quota": Fact("high-priority-ban", f"{NRP}/running/priority-classes (read)"),
    # "GPU quota: bypassed" for these two: gated GPUs without a reservation, preemptible
    "quota_bypass_classes": Fact(("opportunistic2", "opportunistic"),
                                 f"{NRP}/running/priority-classes (read)"),
    # NFD's label for an NVIDIA PCI device: CPU pods keep off GPU nodes with NotIn ["true"]
    "gpu_node_label": Fact("feature.node.kubernetes.io/pci-10de.present",
                           f"{NRP}/running/gpu-pods/ (DESIGN.md 9)"),
    # users may list nodes with their labels, not describe them
    "node_labels_only": Fact(True, f"{NRP}/tutorial/scheduling (read)"),
}


def fact(name: str) -> Any:
    return NAUTILUS_FACTS[name].value


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def quantity(text: str | int | float) -> float:
    """A Kubernetes quantity ("1500m", "16Gi", "8000M") as a number; ValueError if it is none."""
    if isinstance(text, int | float):
        return float(text)
    match = QUANTITY.match(text)
    if not match:
        raise ValueError(text)
    suffix = match.group(2) or ""
    if suffix[:1] in ("e", "E") and suffix != "E":
        return float(text)
    return float(match.group(1)) * UNITS[suffix]


class ApiError(Exception):
    """An API answer other than success: HTTP code, Status reason, message, optional field."""

    def __init__(self, code: int, reason: str, message: str, field_path: str | None = None,
                 kind: str | None = None, name: str | None = None):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.field_path, self.kind, self.name = field_path, kind, name

    def status(self) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if self.name:
            details["name"] = self.name
        if self.kind:
            details["kind"] = self.kind
        if self.field_path:
            details["causes"] = [{"reason": "FieldValueInvalid", "message": self.message,
                                  "field": self.field_path}]
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "details": details,
                "code": self.code}



@dataclass(frozen=True)
class Role:
    """An RBAC Role's rules, and the user bound to it (the API server names it when refusing)."""

    rules: tuple[dict[str, Any], ...]
    user: str = "system:serviceaccount:default:default"

    def allows(self, group: str, resource: str, verb: str) -> bool:
        def has(rule: dict[str, Any], key: str, value: str) -> bool:
            return value in rule.get(key, []) or "*" in rule.get(key, [])
        return any(has(rule, "apiGroups", group) and has(rule, "resources", resource)
                   and has(rule, "verbs", verb) for rule in self.rules)


def role_from_manifests(path: Path, namespace: str) -> Role:
    """The Role of a multi-document YAML file, for the ServiceAccount its RoleBinding binds."""
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    [role] = [d for d in documents if d.get("kind") == "Role"]
    binding = next((d for d in documents if d.get("kind") == "RoleBinding"), {})
    account = next((s["name"] for s in binding.get("subjects") or []
                    if s.get("kind") == "ServiceAccount"), "default")
    return Role(tuple(role["rules"]), f"system:serviceaccount:{namespace}:{account}")


@dataclass(frozen=True)
class ResourceQuota:
    """A ResourceQuota: `hard` limits (`requests.<resource>`, `pods`) on the pods it counts.

    `scope_classes` / `exempt_classes`: it counts only pods of these priority classes, or all but
    pods of those (a scopeSelector on PriorityClass, In or NotIn).
    """

    name: str
    hard: dict[str, str]
    scope_classes: tuple[str, ...] | None = None
    exempt_classes: tuple[str, ...] = ()

    def counts(self, spec: dict[str, Any]) -> bool:
        priority = spec.get("priorityClassName") or ""
        if self.scope_classes is not None and priority not in self.scope_classes:
            return False
        return priority not in self.exempt_classes


@dataclass(frozen=True)
class PodWebhook:
    """A validating admission webhook on pods: `deny(pod manifest)` returns why, or None."""

    name: str
    deny: Callable[[dict[str, Any]], str | None]

@dataclass
class Received:
    """One create request, as sent, and how the double answered it."""

    kind: str
    manifest: dict[str, Any]
    accepted: bool
    error: str | None = None


@dataclass
class Pod:
    name: str
    job_name: str
    labels: dict[str, str]
    directory: Path
    log_path: Path
    container: dict[str, Any]
    spec: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    phase: str = "Pending"
    exit_code: int | None = None
    reason: str | None = None
    waiting_reason: str | None = None
    waiting_message: str | None = None
    unschedulable: str | None = None  # the scheduler's message while no node fits
    node_name: str | None = None
    status_reason: str | None = None  # pod-level: Evicted, Preempted, DeadlineExceeded
    status_message: str | None = None
    created: str = field(default_factory=now)
    started: str | None = None
    finished: str | None = None
    killed: bool = False
    # (reason, message) of its DisruptionTarget condition once something outside stopped it
    disruption: tuple[str, str] | None = None
    disk_peak: int = 0  # the most bytes its files held at one look (the kubelet's measure)

    def manifest(self, namespace: str) -> dict[str, Any]:
        if self.exit_code is not None:
            state = {"terminated": {"exitCode": self.exit_code, "reason": self.reason,
                                    "startedAt": self.started, "finishedAt": self.finished}}
        elif self.waiting_reason:
            state = {"waiting": {"reason": self.waiting_reason,
                                 "message": self.waiting_message or ""}}
        elif self.started:
            state = {"running": {"startedAt": self.started}}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        status: dict[str, Any] = {"phase": self.phase}
        if self.disruption:
            status["conditions"] = [{"type": "DisruptionTarget", "status": "True",
                                     "reason": self.disruption[0],
                                     "message": self.disruption[1],
                                     "lastTransitionTime": self.finished or self.created}]
        if self.unschedulable:
            status["conditions"] = [{"type": "PodScheduled", "status": "False",
                                     "reason": "Unschedulable", "message": self.unschedulable,
                                     "lastTransitionTime": self.created}]
        else:
            status["containerStatuses"] = [{
                "name": self.container["name"], "image": self.container.get("image", ""),
                "imageID": "", "ready": self.phase == "Running", "restartCount": 0,
                "state": state}]
        if self.status_reason:
            status.update(reason=self.status_reason, message=self.status_message or "")
        spec = {**self.spec, "containers": [self.container], "restartPolicy": "Never"}
        if self.node_name:
            spec["nodeName"] = self.node_name
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": self.name, "namespace": namespace, "labels": self.labels,
                         "creationTimestamp": self.created},
            "spec": spec, "status": status,
        }


@dataclass
class Job:
    manifest: dict[str, Any]
    pod: Pod | None  # None: the Job controller could not create it (quota)
    deadline: float | None = None

    @property
    def name(self) -> str:
        return self.manifest["metadata"]["name"]

    def status(self, namespace: str) -> dict[str, Any]:
        pod = self.pod
        if pod is None:
            return {}
        if pod.exit_code is None:
            return {"active": 1, "startTime": pod.started}
        if pod.exit_code == 0:
            return {"succeeded": 1, "startTime": pod.started, "completionTime": pod.finished,
                    "conditions": [{"type": "Complete", "status": "True"}]}
        rule = self.failure_rule(pod)
        if pod.reason == "DeadlineExceeded":
            reason, message = "DeadlineExceeded", "Job was active longer than specified deadline"
        elif rule is not None:  # the Job controller's words (pkg/controller/job)
            reason = "PodFailurePolicy"
            message = (f"Pod {namespace}/{pod.name} has condition DisruptionTarget matching "
                       f"FailJob rule at index {rule}")
        else:
            reason, message = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        return {"failed": 1, "startTime": pod.started,
                "conditions": [{"type": "Failed", "status": "True", "reason": reason,
                                "message": message}]}


    def failure_rule(self, pod: Pod) -> int | None:
        """The index of the pod failure policy's FailJob rule a disrupted pod matches."""
        if pod.disruption is None:
            return None
        rules = (self.manifest["spec"].get("podFailurePolicy") or {}).get("rules") or []
        for index, rule in enumerate(rules):
            if rule.get("action") == "FailJob" and any(
                    c.get("type") == "DisruptionTarget" and c.get("status", "True") == "True"
                    for c in rule.get("onPodConditions") or []):
                return index
        return None


@dataclass
class Node:
    """A node the double's scheduler may place pods on (labels, taints, allocatable)."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    allocatable: dict[str, str] = field(default_factory=lambda: {
        "cpu": "64", "memory": "512Gi", "ephemeral-storage": "1Ti"})
    taints: list[dict[str, str]] = field(default_factory=list)


@dataclass
class NautilusPolicy:
    """NRP Nautilus' rules for Jobs, as an admission webhook refuses them (NAUTILUS_FACTS): limits
    within a ratio of requests, GPUs only under the names the cluster offers, no `sleep
    infinity`. The webhook's name is this double's."""

    max_limit_ratio: float = fact("limit_ratio")
    gpu_resources: tuple[str, ...] = (*fact("ungated_gpu_resources"),
                                      *fact("gated_gpu_resources"))

    def check(self, manifest: dict[str, Any]) -> None:
        pod = manifest["spec"]["template"]["spec"]
        for n, container in enumerate(pod.get("containers") or []):
            where = f"spec.template.spec.containers[{n}]"
            words = " ".join([*(container.get("command") or []), *(container.get("args") or [])])
            if fact("banned_in_jobs") in words:
                raise self.refuse(f"{where}: `{fact('banned_in_jobs')}` in a Job is not "
                                  f"allowed: pods must do work, idle pods are deleted")
            resources = container.get("resources") or {}
            requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
            for resource in ("cpu", "memory"):
                if resource not in requests or resource not in limits:
                    raise self.refuse(f"{where}: requests and limits of {resource} must be set")
                ratio = quantity(limits[resource]) / quantity(requests[resource])
                if ratio > self.max_limit_ratio:
                    raise self.refuse(f"{where}: the {resource} limit {limits[resource]} is more "
                                      f"than {self.max_limit_ratio:g} times the request "
                                      f"{requests[resource]}")
            for resource in {*requests, *limits}:
                if "gpu" in resource or resource.startswith("nvidia.com/"):
                    if resource not in self.gpu_resources:
                        raise self.refuse(f"{where}: GPU resource {resource!r} is not offered; "
                                          f"use one of {list(self.gpu_resources)}")

    @staticmethod
    def refuse(message: str) -> ApiError:
        return ApiError(403, "Forbidden", f'admission webhook "policy.nrp-nautilus.io" denied '
                                          f'the request: {message}')


@dataclass
class Fault:
    """Answers to give the next requests whose method and path match, instead of serving them."""

    method: str
    path: re.Pattern
    # an HTTP status, "drop" to close the connection unanswered, or "hang" to answer nothing
    # until the double stops (the client's timeout ends the wait)
    answers: list[int | str]


def nautilus_namespace() -> dict[str, Any]:
    """KubernetesDouble options for a fresh NRP Nautilus namespace: its Job policy, the priority
    classes, a quota of zero on the gated GPUs (that the opportunistic classes bypass) and the
    ban on other classes (NAUTILUS_FACTS)."""
    allowed, banned = fact("allowed_priority_classes"), fact("banned_priority_classes")
    return {
        "policy": NautilusPolicy(),
        "priority_classes": {*allowed, *banned},
        "quotas": [
            # the quota's name is this double's; the rule (zero until requested) is Nautilus'
            ResourceQuota("gpu-quota", {f"requests.{r}": "0" for r in fact("gated_gpu_resources")},
                          exempt_classes=fact("quota_bypass_classes")),
            ResourceQuota(fact("priority_ban_quota"), {"pods": "0"}, scope_classes=banned),
        ],
    }


@dataclass
class KubernetesDouble:
    """The API server and its 'nodes' (subprocesses); start() it, point KUBECONFIG at it."""

    workdir: Path
    venv_bin: Path
    namespace: str = "default"
    kubernetes_version: str = "1.33"
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    received: list[Received] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)
    finished_pods: list[Pod] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[Node] | None = None
    unpullable_images: set[str] = field(default_factory=set)
    quota: dict[str, str] = field(default_factory=dict)  # hard limits of `nadir-quota`
    quotas: list[ResourceQuota] = field(default_factory=list)
    priority_classes: set[str] | None = None  # None: any priorityClassName exists
    limit_range: dict[str, str] = field(default_factory=dict)  # maximum limit per container
    pod_webhooks: list[PodWebhook] = field(default_factory=list)
    stuck_creating: dict[str, tuple[str, str]] = field(default_factory=dict)  # label -> event
    policy: NautilusPolicy | None = None
    role: Role | None = None
    faults: list[Fault] = field(default_factory=list)
    forget_secrets: bool = False  # accept Secrets and drop them, as a careless cleanup would

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.server: ThreadingHTTPServer | None = None
        self.stopping = threading.Event()
        if self.quota:
            self.quotas.insert(0, ResourceQuota("nadir-quota", self.quota))

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> KubernetesDouble:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def handle_any(self) -> None:
                double.handle(self)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = handle_any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "double",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": self.token}}],
            "contexts": [{"name": "double", "context": {
                "cluster": "double", "user": "tester", "namespace": self.namespace}}],
        }))
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            for pod in self.pods.values():
                self._kill(pod, "Deleted")
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    # --- what tests use ------------------------------------------------------------------
    def accepted(self, kind: str) -> list[dict[str, Any]]:
        return [r.manifest for r in self.received if r.kind == kind and r.accepted]

    def all_pods(self) -> list[Pod]:
        with self.lock:
            return [*self.finished_pods, *self.pods.values()]

    def logs(self) -> dict[str, str]:
        return {pod.name: pod.log_path.read_text(errors="replace") for pod in self.all_pods()
                if pod.log_path.exists()}

    def kill(self, pod_name: str, reason: str = "Evicted") -> None:
        """Kill a running pod's processes, as a node does on eviction or an OOM."""
        with self.lock:
            self._kill(self.pods[pod_name], reason)

    def preempt(self, pod_name: str, grace_s: float = 2.0) -> None:
        """Preempt a running pod as kube-scheduler does for a pod of higher priority: the
        DisruptionTarget condition, a `Preempted` event, SIGTERM (SIGKILL after `grace_s`),
        and the pod deleted once it has stopped."""
        with self.lock:
            pod = self.pods[pod_name]
            pod.disruption = ("PreemptionByScheduler",
                              "default-scheduler: preempting to accommodate a higher priority "
                              "pod")
            self.record_event("Pod", pod.name, "Preempted",
                              f"Preempted by pod {uuid.uuid4()} on node {pod.node_name or 'node'}",
                              event_type="Normal")
            if pod.process is not None and pod.process.poll() is None:
                pod.killed, pod.reason = True, "Error"
                _signal_group(pod.process, signal.SIGTERM)
                threading.Timer(grace_s, _signal_group,
                                args=(pod.process, signal.SIGKILL)).start()

    def inject_faults(self, method: str, path_pattern: str, *answers: int | str) -> None:
        """Answer the next requests matching method and path regex with `answers`, in order."""
        with self.lock:
            self.faults.append(Fault(method, re.compile(path_pattern), list(answers)))

    def pod_of(self, job_name: str) -> Pod | None:
        return next((p for p in self.all_pods() if p.job_name == job_name), None)

    def wait_for(self, predicate, timeout: float, what: str):
        """Poll `predicate()` until it returns something truthy; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if result:
                return result
            time.sleep(0.2)
        raise TimeoutError(f"waited {timeout:.0f}s for {what}")

    # --- HTTP ----------------------------------------------------------------------------
    def handle(self, request: BaseHTTPRequestHandler) -> None:
        url = urlparse(request.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        with self.lock:
            self.requests.append((request.command, url.path))
            fault = next((f for f in self.faults if f.answers and f.method == request.command
                          and f.path.search(url.path)), None)
            answer_instead = fault.answers.pop(0) if fault else None
        if answer_instead == "drop":
            request.close_connection = True
            return  # the client sees the connection closed without an answer
        if answer_instead == "hang":  # an API server that accepted the request and went quiet
            self.stopping.wait(600)
            request.close_connection = True
            return
        try:
            if answer_instead is not None:
                raise ApiError(int(answer_instead), "InjectedFault",
                               f"injected answer {answer_instead}")
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            code, answer = self.route(request.command, url.path, query, body)
        except ApiError as error:
            code, answer = error.code, error.status()
        if isinstance(answer, str):
            payload, content_type = answer.encode(), "text/plain; charset=utf-8"
        else:
            payload, content_type = json.dumps(answer).encode(), "application/json"
        request.send_response(code)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)

    def route(self, method: str, path: str, query: dict[str, str],
              body: bytes) -> tuple[int, Any]:
        request = re.fullmatch(r"/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/namespaces/[^/]+/"
                               r"(?P<kind>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?", path)
        if request:  # authorization comes before the API server looks for the object
            self.authorize(method, request["group"] or "", request["kind"], request["name"],
                           request["sub"], query)
        core = re.fullmatch(r"/api/v1/namespaces/([^/]+)/(secrets|pods|events)(?:/([^/]+))?(/log)?",
                            path)
        batch = re.fullmatch(r"/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?(/status)?", path)
        match = core or batch
        if not match:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource "
                                            f"({method} {path})")
        if match.group(1) != self.namespace:
            raise ApiError(403, "Forbidden", f"namespace {match.group(1)!r}: this user may use "
                                             f"only namespace {self.namespace!r}")
        with self.lock:
            if core and core.group(2) == "secrets":
                return self.secret_call(method, core.group(3), body, query)
            if core and core.group(2) == "events":
                return self.event_call(method, query)
            if core:
                return self.pod_call(method, core.group(3), bool(core.group(4)), query)
            return self.job_call(method, batch.group(2), bool(batch.group(3)), body, query)

    def authorize(self, method: str, group: str, kind: str, name: str | None, sub: str | None,
                  query: dict[str, str]) -> None:
        """403, in the API server's words, for a request the Role does not allow."""
        if self.role is None:
            return
        if method == "GET":
            verb = "get" if name else ("watch" if query.get("watch") in ("1", "true") else "list")
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                    "DELETE": "delete" if name else "deletecollection"}[method]
        resource = f"{kind}/{sub}" if sub else kind
        if self.role.allows(group, resource, verb):
            return
        what = (f"{kind}.{group}" if group else kind) + (f' "{name}"' if name else "")
        raise ApiError(403, "Forbidden", f'{what} is forbidden: User "{self.role.user}" cannot '
                                         f'{verb} resource "{resource}" in API group "{group}" '
                                         f'in the namespace "{self.namespace}"',
                       kind=kind, name=name)

    def decode(self, body: bytes, api_version: str, kind: str) -> dict[str, Any]:
        try:
            manifest = json.loads(body)
        except json.JSONDecodeError as error:
            raise ApiError(400, "BadRequest", f"the body is not JSON: {error}") from None
        # The API server takes the kind and version from the URL when the body leaves them out.
        manifest.setdefault("apiVersion", api_version)
        manifest.setdefault("kind", kind)
        if (manifest["apiVersion"], manifest["kind"]) != (api_version, kind):
            raise ApiError(400, "BadRequest", f"the body is a {manifest['kind']} "
                                              f"{manifest['apiVersion']}, not a {kind}")
        return manifest

    def secret_call(self, method: str, name: str | None, body: bytes,
                    query: dict[str, str]) -> tuple[int, Any]:
        if method == "POST" and name is None:
            manifest = self.decode(body, "v1", "Secret")
            self.admit("Secret", manifest, validate_secret)
            if not self.forget_secrets:
                self.secrets[manifest["metadata"]["name"]] = manifest
            return 201, manifest
        if method == "GET" and name is None:  # values are never listed back here: not needed
            selector = _selector(query)
            items = [{k: v for k, v in secret.items() if k != "data"}
                     for secret in self.secrets.values()
                     if all((secret["metadata"].get("labels") or {}).get(k) == v
                            for k, v in selector.items())]
            return 200, {"apiVersion": "v1", "kind": "SecretList", "metadata": {}, "items": items}
        if method == "PUT" and name:
            manifest = self.decode(body, "v1", "Secret")
            if name not in self.secrets:
                raise ApiError(404, "NotFound", f'secrets "{name}" not found', kind="secrets",
                               name=name)
            del self.secrets[name]  # admitted as a new object (no 409 with itself)
            self.admit("Secret", manifest, validate_secret)
            self.secrets[name] = manifest
            return 200, manifest
        if method == "DELETE" and name:
            if self.secrets.pop(name, None) is None:
                raise ApiError(404, "NotFound", f'secrets "{name}" not found', kind="secrets",
                               name=name)
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        raise ApiError(405, "MethodNotAllowed", f"{method} on secrets is not served here")

    def event_call(self, method: str, query: dict[str, str]) -> tuple[int, Any]:
        if method != "GET":
            raise ApiError(405, "MethodNotAllowed", f"{method} on events is not served here")
        fields = dict(term.split("=", 1) for term in query.get("fieldSelector", "").split(",")
                      if "=" in term)
        items = [e for e in self.events
                 if all(_field(e, key) == value for key, value in fields.items())]
        return 200, {"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": items}

    def job_call(self, method: str, name: str | None, status: bool, body: bytes,
                 query: dict[str, str]) -> tuple[int, Any]:
        if method == "POST" and name is None:
            manifest = self.decode(body, "batch/v1", "Job")
            self.admit("Job", manifest, validate_job)
            job = self.start_job(manifest)
            return 201, {**job.manifest, "status": {}}
        if method == "GET" and name is None:
            selector = _selector(query)
            items = [{**job.manifest, "status": job.status(self.namespace)}
                     for job in self.jobs.values()
                     if all(job.manifest["metadata"].get("labels", {}).get(k) == v
                            for k, v in selector.items())]
            return 200, {"apiVersion": "batch/v1", "kind": "JobList", "metadata": {},
                         "items": items}
        job = self.jobs.get(name or "")
        if job is None:
            raise ApiError(404, "NotFound", f'jobs.batch "{name}" not found', kind="jobs",
                           name=name)
        if method == "GET":
            return 200, {**job.manifest, "status": job.status(self.namespace)}
        if method == "DELETE" and not status:
            del self.jobs[name]
            if job.pod is not None and job.pod.name in self.pods:
                self.delete_pod(job.pod.name)
            return 200, {**job.manifest, "status": job.status(self.namespace)}
        raise ApiError(405, "MethodNotAllowed", f"{method} on a job is not served here")

    def pod_call(self, method: str, name: str | None, log: bool,
                 query: dict[str, str]) -> tuple[int, Any]:
        if method == "GET" and name is None:
            selector = _selector(query)
            items = [pod.manifest(self.namespace) for pod in self.pods.values()
                     if all(pod.labels.get(k) == v for k, v in selector.items())]
            return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}
        pod = self.pods.get(name or "")
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found', kind="pods", name=name)
        if method == "GET" and log:
            container = query.get("container", pod.container["name"])
            if container != pod.container["name"]:
                raise ApiError(400, "BadRequest", f"container {container} is not valid for pod "
                                                  f"{name}")
            # Go's ParseBool, as the server reads it; no container here ever restarts
            if query.get("previous", "").lower() in ("1", "t", "true"):
                raise ApiError(400, "BadRequest", f'previous terminated container "{container}"'
                                                  f' in pod "{name}" not found')
            if pod.process is None:  # as the kubelet answers for a container never started
                waiting = pod.waiting_reason or "PodInitializing"
                raise ApiError(400, "BadRequest", f'container "{container}" in pod "{name}" is '
                                                  f"waiting to start: {waiting}")
            return 200, pod.log_path.read_text(errors="replace") if pod.log_path.exists() else ""
        if method == "DELETE" and not log:
            self.delete_pod(name)
            return 200, pod.manifest(self.namespace)
        raise ApiError(405, "MethodNotAllowed", f"{method} on a pod is not served here")

    # --- admission -----------------------------------------------------------------------
    def admit(self, kind: str, manifest: dict[str, Any], semantic_check) -> None:
        name = (manifest.get("metadata") or {}).get("name")
        try:
            try:
                kubernetes_validate.validate(manifest, self.kubernetes_version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                                for p in error.absolute_path).lstrip(".")
                raise ApiError(422, "Invalid", f"{kind} {name!r} is invalid: {where}: "
                                               f"{error.message}", where, kind, name) from None
            semantic_check(manifest)
            if self.policy is not None and kind == "Job":
                self.policy.check(manifest)
            existing = self.secrets if kind == "Secret" else self.jobs
            if name in existing:
                raise ApiError(409, "AlreadyExists", f'{kind} "{name}" already exists',
                               kind=kind, name=name)
        except ApiError as error:
            if error.code == 422 and error.name is None:
                error.message = f"{kind} {name!r} is invalid: {error.message}"
                error.kind, error.name = kind, name
            self.received.append(Received(kind, manifest, False, error.message))
            raise
        manifest["metadata"].update(namespace=self.namespace, uid=str(uuid.uuid4()),
                                    creationTimestamp=now(), resourceVersion="1")
        self.received.append(Received(kind, manifest, True))

    # --- pods ----------------------------------------------------------------------------
    def start_job(self, manifest: dict[str, Any]) -> Job:
        name = manifest["metadata"]["name"]
        template = manifest["spec"]["template"]
        labels = {**(template.get("metadata") or {}).get("labels", {}), "job-name": name,
                  "batch.kubernetes.io/job-name": name,
                  "controller-uid": manifest["metadata"]["uid"]}
        pod_name = f"{name}-{secrets.token_hex(3)[:5]}"
        directory = self.workdir / "pods" / pod_name
        spec = {k: v for k, v in template["spec"].items() if k != "containers"}
        pod = Pod(pod_name, name, labels, directory, directory / "log.txt",
                  template["spec"]["containers"][0], spec)
        deadline_s = manifest["spec"].get("activeDeadlineSeconds")
        job = Job(manifest, pod, time.monotonic() + deadline_s if deadline_s else None)
        self.jobs[name] = job
        refusal = self.pod_refusal(pod)
        if refusal:  # the Job exists, its controller cannot create the pod
            job.pod = None
            self.record_event("Job", name, "FailedCreate", f"Error creating: {refusal}")
            return job
        self.pods[pod_name] = pod
        if not self.schedule(pod):
            return job
        stuck = next((event for selector, event in self.stuck_creating.items()
                      if _selector({"labelSelector": selector}).items() <= labels.items()), None)
        if stuck:  # scheduled; the kubelet cannot make its sandbox or mount its volumes
            self.record_event("Pod", pod_name, *stuck)
            return job
        image = pod.container.get("image", "")
        if image in self.unpullable_images:
            pod.waiting_reason = "ErrImagePull"
            pod.waiting_message = (f'failed to pull and unpack image "{image}": failed to '
                                   f'resolve reference "{image}": not found')
            self.record_event("Pod", pod_name, "Failed",
                              f'Failed to pull image "{image}": {pod.waiting_message}')
            return job
        self.launch(pod, job)
        return job

    def record_event(self, kind: str, name: str, reason: str, message: str,
                     event_type: str = "Warning") -> None:
        stamp = now()
        self.events.append({
            "apiVersion": "v1", "kind": "Event", "type": event_type, "reason": reason,
            "message": message, "count": 1, "firstTimestamp": stamp, "lastTimestamp": stamp,
            "metadata": {"name": f"{name}.{secrets.token_hex(8)}", "namespace": self.namespace},
            "involvedObject": {"kind": kind, "name": name, "namespace": self.namespace}})

    def pod_refusal(self, pod: Pod) -> str | None:
        """Why the API server refuses to create `pod` (admission, in the order a cluster runs
        it: priority class, LimitRange, validating webhooks, quotas), or None."""
        forbidden = f'pods "{pod.name}" is forbidden'
        priority = pod.spec.get("priorityClassName")
        if priority and self.priority_classes is not None \
                and priority not in self.priority_classes:
            return f"{forbidden}: no PriorityClass with name {priority} was found"
        limits = (pod.container.get("resources") or {}).get("limits") or {}
        for resource, maximum in sorted(self.limit_range.items()):
            if resource in limits and quantity(limits[resource]) > quantity(maximum):
                return (f"{forbidden}: maximum {resource} usage per Container is {maximum}, "
                        f"but limit is {limits[resource]}")
        manifest = pod.manifest(self.namespace)
        for webhook in self.pod_webhooks:
            denial = webhook.deny(manifest)
            if denial:
                return f'admission webhook "{webhook.name}" denied the request: {denial}'
        for quota in self.quotas:
            refusal = self.quota_refusal(quota, pod)
            if refusal:
                return f"{forbidden}: {refusal}"
        return None

    def quota_refusal(self, quota: ResourceQuota, pod: Pod) -> str | None:
        """The quota's refusal of `pod`, as the API server words it, or None if it fits."""
        if not quota.counts(pod.spec):
            return None

        def requested(p: Pod, key: str) -> float:
            if key == "pods":
                return 1.0
            asked = ((p.container.get("resources") or {}).get("requests") or {})
            return quantity(asked.get(key.removeprefix("requests."), "0"))

        counted = [p for p in self.pods.values() if p.exit_code is None and quota.counts(p.spec)]
        exceeded = []
        for key, hard in sorted(quota.hard.items()):
            wanted = requested(pod, key)
            used = sum(requested(p, key) for p in counted)
            if wanted and used + wanted > quantity(hard):
                asked = "1" if key == "pods" else \
                    pod.container["resources"]["requests"][key.removeprefix("requests.")]
                exceeded.append((key, asked, used, hard))
        if not exceeded:
            return None
        requested_text = ",".join(f"{key}={wanted}" for key, wanted, _, _ in exceeded)
        used_text = ",".join(f"{key}={used:g}" for key, _, used, _ in exceeded)
        limited = ",".join(f"{key}={hard}" for key, _, _, hard in exceeded)
        return (f"exceeded quota: {quota.name}, requested: {requested_text}, used: {used_text}, "
                f"limited: {limited}")

    def schedule(self, pod: Pod) -> bool:
        """Place `pod` on a node (True), or leave it Pending and Unschedulable (False)."""
        if self.nodes is None:
            return True
        reasons: dict[str, int] = {}
        for node in self.nodes:
            why = unfit(node, pod.spec, pod.container)
            if why is None:
                pod.node_name = node.name
                return True
            reasons[why] = reasons.get(why, 0) + 1
        pod.unschedulable = (f"0/{len(self.nodes)} nodes are available: "
                             + ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
                             + ". preemption: not eligible due to preemptionPolicy=Never.")
        self.record_event("Pod", pod.name, "FailedScheduling", pod.unschedulable)
        return False

    def pod_environment(self, pod: Pod) -> dict[str, str] | None:
        """The container's environment, or None when a referenced Secret or key is missing."""
        home, tmp = pod.directory / "home", pod.directory / "tmp"
        home.mkdir(parents=True)
        tmp.mkdir()
        # PYTHONPATH: the test venv may have nadir installed (editable, from another checkout
        # than the one under test), the image has not; pods import it from the source archive
        # Snakemake deploys into their working directory, as on a cluster.
        env = {"PATH": f"{self.venv_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home),
               "TMPDIR": str(tmp), "HOSTNAME": pod.name, "PYTHONPATH": "src"}
        for var in pod.container.get("env") or []:
            if "value" in var:
                env[var["name"]] = var["value"]
                continue
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if ref is None:
                env[var["name"]] = ""
                continue
            secret = self.secrets.get(ref["name"])
            if secret is None or ref["key"] not in (secret.get("data") or {}):
                return None
            env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        return env

    def launch(self, pod: Pod, job: Job) -> None:
        workdir = pod.directory / "workdir"
        workdir.mkdir(parents=True)
        env = self.pod_environment(pod)
        if env is None:  # the kubelet keeps such a pod waiting; so does the double
            pod.waiting_reason = "CreateContainerConfigError"
            pod.waiting_message = "secret or key referenced by the pod's environment not found"
            self.record_event("Pod", pod.name, "Failed", f"Error: {pod.waiting_message}")
            return
        argv = [*(pod.container.get("command") or []), *(pod.container.get("args") or [])]
        pod.started, pod.phase = now(), "Running"
        with open(pod.log_path, "wb") as log:
            pod.process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True)
        threading.Thread(target=self.watch, args=(pod, job), daemon=True).start()

    def watch(self, pod: Pod, job: Job) -> None:
        """Wait for the pod's processes; meanwhile enforce the Job's deadline and, as the
        kubelet's eviction manager does, the container's ephemeral-storage limit."""
        assert pod.process is not None
        limit = ((pod.container.get("resources") or {}).get("limits") or {}) \
            .get("ephemeral-storage")
        while True:
            timeout = DISK_CHECK_S if job.deadline is None else \
                min(DISK_CHECK_S, max(0.0, job.deadline - time.monotonic()))
            try:
                code = pod.process.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                pod.disk_peak = max(pod.disk_peak, disk_usage(pod.directory))
                with self.lock:
                    if job.deadline is not None and time.monotonic() >= job.deadline:
                        self._kill(pod, "DeadlineExceeded")
                        job.deadline = None
                    elif limit is not None and pod.disk_peak > quantity(limit):
                        self._kill(pod, "Evicted", CONTAINER_STORAGE_EVICTION.format(
                            container=pod.container["name"], limit=limit))
        pod.disk_peak = max(pod.disk_peak, disk_usage(pod.directory))  # what it left
        with self.lock:
            pod.finished = now()
            pod.exit_code = 128 - code if code < 0 else code  # a signal's number, as a shell's
            if pod.reason is None:
                pod.reason = "Completed" if code == 0 else "Error"
            pod.phase = "Succeeded" if pod.exit_code == 0 else "Failed"
            if pod.disruption and self.pods.get(pod.name) is pod:  # deleted once stopped
                self.finished_pods.append(self.pods.pop(pod.name))

    def _kill(self, pod: Pod, reason: str, message: str | None = None) -> None:
        if pod.process is not None and pod.process.poll() is None:
            pod.killed, pod.reason = True, reason
            if reason in POD_LEVEL_REASONS:
                pod.status_reason = reason
                pod.status_message = message or POD_LEVEL_REASONS[reason]
                if message:
                    self.record_event("Pod", pod.name, reason, message)
            _signal_group(pod.process, signal.SIGKILL)

    def delete_pod(self, name: str) -> None:
        pod = self.pods.pop(name)
        pod.phase = pod.phase if pod.exit_code is not None else "Failed"
        self._kill(pod, "Deleted")
        if pod.process is not None:
            pod.process.wait()
        self.finished_pods.append(pod)
        # Keep the log for assertions; the pod's files go, as on a node.
        shutil.rmtree(pod.directory / "workdir", ignore_errors=True)


# Pod-level reasons a node gives when it stops a pod, with its message.
POD_LEVEL_REASONS = {
    "Evicted": "The node was low on resource: ephemeral-storage. Threshold quantity: 10Gi, "
               "available: 9Gi.",
}
# The kubelet's eviction of a container whose files outgrow its ephemeral-storage limit
# (kubernetes pkg/kubelet/eviction/helpers.go, containerEphemeralStorageMessageFmt; Go's %q of
# the limit's quantity), and how often the double looks (the kubelet: its housekeeping period).
CONTAINER_STORAGE_EVICTION = ('Container {container} exceeded its local ephemeral storage limit '
                              '"{limit}". ')
DISK_CHECK_S = 0.5


def disk_usage(folder: Path) -> int:
    """Bytes the files under `folder` occupy on disk (allocated blocks, as du counts them):
    the container's writable layer and its emptyDir volumes, all of which live there."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:  # removed while counted
                pass
    return total


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    """Send `signum` to a pod's processes, if they still run."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass


def _selector(query: dict[str, str]) -> dict[str, str]:
    return dict(term.split("=", 1) for term in query.get("labelSelector", "").split(",")
                if "=" in term)


def _field(obj: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        obj = (obj or {}).get(part) if isinstance(obj, dict) else None
    return obj


def _expression_matches(labels: dict[str, str], expression: dict[str, Any]) -> bool:
    key, operator = expression["key"], expression["operator"]
    values = expression.get("values") or []
    present = key in labels
    if operator == "In":
        return present and labels[key] in values
    if operator == "NotIn":
        return not present or labels[key] not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt"):
        try:
            have, bound = int(labels[key]), int(values[0])
        except (KeyError, ValueError, IndexError):
            return False
        return have > bound if operator == "Gt" else have < bound
    raise ApiError(422, "Invalid", f"unknown node selector operator {operator!r}")


def _tolerated(taint: dict[str, str], tolerations: list[dict[str, Any]]) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
            continue
        if toleration.get("operator", "Equal") == "Exists":
            if not toleration.get("key") or toleration["key"] == taint["key"]:
                return True
        elif toleration.get("key") == taint["key"] and \
                toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def unfit(node: Node, spec: dict[str, Any], container: dict[str, Any]) -> str | None:
    """Why `node` cannot take the pod, in kube-scheduler's words, or None when it can."""
    selector = spec.get("nodeSelector") or {}
    terms = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
             .get("requiredDuringSchedulingIgnoredDuringExecution") or {}) \
        .get("nodeSelectorTerms") or []
    if any(node.labels.get(k) != v for k, v in selector.items()) or (terms and not any(
            all(_expression_matches(node.labels, e) for e in term.get("matchExpressions") or [])
            for term in terms)):
        return "node(s) didn't match Pod's node affinity/selector"
    for taint in node.taints:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and \
                not _tolerated(taint, spec.get("tolerations") or []):
            return f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
    requests = (container.get("resources") or {}).get("requests") or {}
    for resource, amount in sorted(requests.items()):
        if quantity(node.allocatable.get(resource, "0")) < quantity(amount):
            return f"Insufficient {resource}"
    return None


# --- server-side validation beyond the JSON schema -------------------------------------------
def invalid(field_path: str, message: str) -> ApiError:
    return ApiError(422, "Invalid", f"{field_path}: {message}", field_path)


def check_metadata(metadata: dict[str, Any], name_pattern: re.Pattern, max_name: int,
                   path: str = "metadata") -> None:
    name = metadata.get("name")
    if path == "metadata" and not name:
        raise invalid("metadata.name", "Required value: name or generateName is required")
    if name and (len(name) > max_name or not name_pattern.match(name)):
        raise invalid(f"{path}.name", f"Invalid value: {name!r}: must be a lowercase RFC 1123 "
                                      f"name of at most {max_name} characters")
    for key, value in (metadata.get("labels") or {}).items():
        prefix, _, label = key.rpartition("/")
        if (not label or len(label) > 63 or not LABEL_NAME.match(label)
                or (prefix and not DNS_SUBDOMAIN.match(prefix))):
            raise invalid(f"{path}.labels", f"Invalid value: {key!r}: not a valid label key")
        if not isinstance(value, str) or len(value) > 63 or not LABEL_NAME.match(value):
            raise invalid(f"{path}.labels", f"Invalid value: {value!r}: a label value must be "
                                            f"63 characters or less of [A-Za-z0-9_.-], "
                                            f"alphanumeric at both ends")


def validate_secret(manifest: dict[str, Any]) -> None:
    check_metadata(manifest.get("metadata") or {}, DNS_SUBDOMAIN, 253)
    for key, value in (manifest.get("data") or {}).items():
        if not SECRET_KEY.match(key):
            raise invalid(f"data[{key}]", "Invalid value: a valid config key must consist of "
                                          "alphanumeric characters, '-', '_' or '.'")
        try:
            base64.b64decode(value, validate=True)
        except ValueError:
            raise invalid(f"data[{key}]", "Invalid value: not base64") from None


def validate_job(manifest: dict[str, Any]) -> None:
    # The job name becomes the pods' job-name label, so it must be a valid label value.
    check_metadata(manifest.get("metadata") or {}, DNS_LABEL, 63)
    spec = manifest.get("spec") or {}
    template = spec.get("template") or {}
    check_metadata(template.get("metadata") or {}, DNS_SUBDOMAIN, 253, "spec.template.metadata")
    pod = template.get("spec") or {}
    where = "spec.template.spec"
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        raise invalid(f"{where}.restartPolicy", f"Unsupported value: {pod.get('restartPolicy')!r}"
                                                ': supported values: "OnFailure", "Never"')
    if spec.get("podFailurePolicy") and pod.get("restartPolicy") != "Never":
        raise invalid(f"{where}.restartPolicy", f"Invalid value: {pod.get('restartPolicy')!r}: "
                                                f'only "Never" is supported when '
                                                f"podFailurePolicy is specified")
    volumes = [v["name"] for v in pod.get("volumes") or []]
    if len(set(volumes)) != len(volumes):
        raise invalid(f"{where}.volumes", f"Duplicate value: {volumes}")
    for n, volume in enumerate(pod.get("volumes") or []):
        size = (volume.get("emptyDir") or {}).get("sizeLimit")
        if size is not None and not QUANTITY.match(str(size)):
            raise invalid(f"{where}.volumes[{n}].emptyDir.sizeLimit",
                          f"Invalid value: {size!r}: quantities must match "
                          f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
    for n, container in enumerate(pod.get("containers") or []):
        cwhere = f"{where}.containers[{n}]"
        if not container.get("image"):
            raise invalid(f"{cwhere}.image", "Required value")
        for m, mount in enumerate(container.get("volumeMounts") or []):
            if mount["name"] not in volumes:
                raise invalid(f"{cwhere}.volumeMounts[{m}].name",
                              f"Not found: {mount['name']!r}")
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        for kind, values in (("requests", requests), ("limits", limits)):
            for resource, value in values.items():
                try:
                    quantity(value)
                except ValueError:
                    raise invalid(f"{cwhere}.resources.{kind}[{resource}]",
                                  f"Invalid value: {value!r}: not a quantity") from None
        for resource, value in requests.items():
            if resource not in OVERCOMMITABLE and "/" in resource:
                if resource not in limits:
                    raise invalid(f"{cwhere}.resources.limits",
                                  f"Required value: Limit must be set for non overcommitable "
                                  f"resources ({resource})")
                if quantity(limits[resource]) != quantity(value):
                    raise invalid(f"{cwhere}.resources.requests[{resource}]",
                                  f"Invalid value: {value!r}: must be equal to {resource} limit")
            elif resource in limits and quantity(value) > quantity(limits[resource]):
                raise invalid(f"{cwhere}.resources.requests[{resource}]",
                              f"Invalid value: {value!r}: must be less than or equal to "
                              f"{resource} limit of {limits[resource]}")

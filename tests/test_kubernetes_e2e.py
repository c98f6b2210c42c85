"""The sample pipeline as Kubernetes pods: the API double (tests/k8s_double.py) runs every Job
in a namespace like a fresh NRP Nautilus one (its Job policy, priority classes, a quota of zero on
the gated GPUs, the RBAC Role of profiles/nautilus/controller.yaml, GPU and CPU nodes), SeaweedFS
holds every file, and `profiles/nautilus`, unedited but for namespace, bucket, images and S3
endpoints, supplies the settings.

Snakemake runs from a copy of this checkout (tracked and untracked, non-ignored files, in a fresh
git repository), because it ships the git-tracked files to the pods as its source archive.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import kubernetes.client
import kubernetes.config
import pytest
import yaml
from conftest import GPU_RULES, ROOT, RUN_JOBS, SUMMARY_JOBS, planned_jobs
from k8s_double import (
    KubernetesDouble,
    Node,
    Pod,
    fact,
    nautilus_namespace,
    quantity,
    role_from_manifests,
)

pytestmark = pytest.mark.slow

BUCKET = "nadir-k8s"
PROFILE = yaml.safe_load((ROOT / "profiles/nautilus/config.yaml").read_text())
POD_SETTINGS = yaml.safe_load((ROOT / "profiles/nautilus/pods.yaml").read_text())
IMAGES = {"container-image": "gitlab-registry.nrp-nautilus.io/nadir-ci/nadir:0.1.0-cu130",
          "kubernetes-pods-cpu-image": "gitlab-registry.nrp-nautilus.io/nadir-ci/nadir:0.1.0-cpu"}
# This machine has 2 cores: the profile's 8 threads per GPU job would only oversubscribe them.
SMALL_THREADS = ["--set-threads", "train=2", "evaluate=2", "chip=1"]
GPU_NODE = {"cpu": "64", "memory": "512Gi", "ephemeral-storage": "2Ti"}
ON_GPU_NODES = {fact("gpu_node_label"): "true", "nvidia.com/cuda.driver.major": "580"}
# Listed first: nodes whose GPUs the profile's default GPU settings must not take (gated cards,
# an old driver); every GPU node would fit a CPU pod, and the scheduler takes the first that fits.
NODES = [
    Node("h100-node", {**ON_GPU_NODES, "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
         {**GPU_NODE, "nvidia.com/h100": "4"}),
    Node("rtx3090-old-driver", {**ON_GPU_NODES, "nvidia.com/cuda.driver.major": "550",
                                "nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-3090"},
         {**GPU_NODE, "nvidia.com/gpu": "8"}),
    Node("rtx3090-node", {**ON_GPU_NODES, "nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-3090"},
         {**GPU_NODE, "nvidia.com/gpu": "8"}),
    Node("cpu-node", {"kubernetes.io/hostname": "cpu-node"}, GPU_NODE),
]


def make_checkout(dest: Path) -> Path:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    return dest


def snakemake_on(checkout: Path, double: KubernetesDouble, s3, prefix: str, *args: str,
                 configfile: str = "config/test.yaml",
                 profile: bool = True) -> subprocess.CompletedProcess:
    """Snakemake as a user runs it against a cluster: kubeconfig and S3 keys in the environment;
    PYTHONPATH stands for `make install` (pip install -e .), which makes the plugin visible.
    With `profile`, profiles/nautilus with what a user sets in it: namespace, bucket, images,
    and the S3 endpoints (the controller reaches S3 by another name than pods, as outside and
    inside the cluster)."""
    env = {**os.environ, **s3.env(), "KUBECONFIG": str(double.kubeconfig),
           "PYTHONPATH": str(checkout / "src")}
    cmd = [sys.executable, "-m", "snakemake",
           *(["--workflow-profile", "profiles/nautilus",
              "--kubernetes-pods-namespace", double.namespace,
              *(f"--{option}={image}" for option, image in IMAGES.items()),
              "--kubernetes-pods-s3-endpoint-in-pods", s3.endpoint] if profile else []),
           "--configfile", configfile, "--replace-workflow-config",
           "--default-storage-prefix", f"s3://{BUCKET}/{prefix}",
           "--storage-s3-endpoint-url", outside_endpoint(s3) if profile else s3.endpoint,
           # Snakemake's default of 10 s between status checks leaves each finished pod
           # unnoticed for 5 s on average, along a chain of about 15 jobs; the double answers
           # at once, so the test checks every second (as test_kubernetes_failures does).
           "--seconds-between-status-checks", "1", *args]
    return subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True,
                          timeout=1800)


def outside_endpoint(s3) -> str:
    """The S3 endpoint by another name: the controller's, outside the cluster."""
    return s3.endpoint.replace("127.0.0.1", "localhost")


def rule_of(job: dict) -> str:
    return job["metadata"]["labels"]["snakemake-rule"]


def container(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


def kill_when(double: KubernetesDouble, rule: str, ready: Callable[[Pod], bool], reason: str,
              killed: dict[str, Pod]) -> None:
    """Stop the first running pod of `rule` once `ready(pod)` holds (in a thread): "Preempted"
    as the scheduler does (the pod deleted), other reasons as a node does."""
    def running_pod():
        return next((pod for pod in double.all_pods()
                     if pod.labels.get("snakemake-rule") == rule and pod.phase == "Running"
                     and ready(pod)), None)
    try:
        pod = double.wait_for(running_pod, 900, f"a running {rule} pod, ready to be killed")
    except TimeoutError:
        return
    if reason == "Preempted":
        double.preempt(pod.name)
    else:
        double.kill(pod.name, reason)
    killed[rule] = pod


def log_has(text: str) -> Callable[[Pod], bool]:
    return lambda pod: pod.log_path.exists() and text in pod.log_path.read_text()


def checkpoint_keys(s3, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/checkpoints/")
    return [item["Key"] for item in listed.get("Contents", []) if "/ckpt-" in item["Key"]]


def watch_training_progress(double: KubernetesDouble, seen: list[str]) -> None:
    """Read running train pods' logs through the API, as `kubectl logs -f` does, and keep the
    iteration lines seen while a pod was still running (in a thread)."""
    core = kubernetes.client.CoreV1Api(
        kubernetes.config.new_client_from_config(str(double.kubeconfig)))
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and not seen:
        for pod in double.all_pods():
            if pod.labels.get("snakemake-rule") != "train" or pod.exit_code is not None \
                    or pod.process is None:
                continue
            try:
                log = core.read_namespaced_pod_log(pod.name, double.namespace,
                                                   container="snakemake")
            except kubernetes.client.ApiException:
                continue
            lines = [line for line in log.splitlines()
                     if re.search(r"iteration \d+/\d+ \(", line)]
            if lines and pod.exit_code is None:
                seen.append(lines[-1])
        time.sleep(0.5)


@dataclass
class PipelineRun:
    checkout: Path
    double: KubernetesDouble
    proc: subprocess.CompletedProcess
    killed: dict[str, Pod]  # rule -> the pod the test killed
    progress: list[str]  # iteration lines read from a running training pod through the API
    prefix: str


CONTROLLER = ROOT / "profiles/nautilus/controller.yaml"
PIPELINE_CONFIG = "config/k8s.yaml"
# config/test.yaml, with training long enough to be killed after its first checkpoint
# (iteration 4 of 12) and still be running.
TRAINING = {"iterations": 12, "log_interval": 2}
CHECKPOINT_EVERY = 4


@pytest.fixture(scope="module")
def pipeline(s3, tmp_path_factory):
    """The sample pipeline as pods. Two pods are stopped on the way, as a cluster does: a chip
    pod evicted while it stages its inputs (retried with more memory) and the training pod
    preempted by the scheduler once its first checkpoint is in S3 (the retry resumes from it)."""
    base = tmp_path_factory.mktemp("k8s-pipeline")
    checkout = make_checkout(base / "checkout")
    config = yaml.safe_load((checkout / "config/test.yaml").read_text())
    config["training"].update(TRAINING)
    config["checkpoints"] = {"every": CHECKPOINT_EVERY}
    (checkout / PIPELINE_CONFIG).write_text(yaml.safe_dump(config))
    double = KubernetesDouble(base / "cluster", Path(sys.executable).parent, namespace="nadir-ci",
                              nodes=NODES, role=role_from_manifests(CONTROLLER, "nadir-ci"),
                              **nautilus_namespace()).start()
    killed: dict[str, Pod] = {}
    progress: list[str] = []
    for rule, ready, reason in [
            ("chip", log_has("Retrieving from storage"), "Evicted"),
            ("train", lambda pod: bool(checkpoint_keys(s3, "pipeline")), "Preempted")]:
        threading.Thread(target=kill_when, args=(double, rule, ready, reason, killed),
                         daemon=True).start()
    threading.Thread(target=watch_training_progress, args=(double, progress), daemon=True).start()
    proc = snakemake_on(checkout, double, s3, "pipeline", "--jobs", "2", *SMALL_THREADS,
                        configfile=PIPELINE_CONFIG)
    yield PipelineRun(checkout, double, proc, killed, progress, "pipeline")
    double.stop()


def test_sample_pipeline_runs_end_to_end_as_pods(pipeline, s3):
    assert pipeline.proc.returncode == 0, pipeline.proc.stderr[-6000:]
    jobs = pipeline.double.accepted("Job")
    rules = sorted(rule_of(job) for job in jobs)
    # one pod per job (each killed pod's retry is a second Job of its rule), but one for the
    # profile's group of summarising jobs (Snakemake names it by group and rules); `summary`
    # runs on the controller (a localrule that prints the leaderboard)
    grouped = sorted(g.split("=")[0] for g in PROFILE["groups"] if g.endswith("=summarise"))
    assert grouped == ["compare", "cost", "leaderboard", "plot_class_ap"]
    group_label = "_".join(["summarise", *grouped])
    assert rules == sorted(["fetch", "index", "dataset_stats", "chip", "chip",
                            "chip", "chip_manifest", "coco", "train", "train", "evaluate",
                            "evaluate_chips", "evaluate_scenes", "loss_curve", "plot_pr",
                            "plot_detections", group_label])
    [group_job] = [job for job in jobs if rule_of(job) == group_label]
    words = shlex.split(container(group_job)["args"][1].split("--target-jobs ")[1])
    targets = words[:next(i for i, w in enumerate(words) if w.startswith("--"))]
    assert sorted(t.split(":")[0] for t in targets) == grouped, targets
    # sized by Snakemake's group rule: the dataset's per-class figure and comparison side by
    # side (1 CPU, 2000 MB each by the profile's defaults), the rest after them
    requests = container(group_job)["resources"]["requests"]
    assert (requests["cpu"], requests["memory"]) == ("2000m", "4000M"), requests
    assert [r.error for r in pipeline.double.received if not r.accepted] == []
    # every file is in the bucket, nothing was written beside the controller
    leaderboard = s3.client().get_object(
        Bucket=BUCKET, Key=f"{pipeline.prefix}/results/leaderboard.csv")["Body"].read().decode()
    assert "ssdlite320_mobilenet_v3_large" in leaderboard
    assert not (pipeline.checkout / "results").exists()
    # each pod ran in its own directory and received the sources from S3
    for pod in pipeline.double.all_pods():
        if pod not in pipeline.killed.values():
            assert pod.exit_code == 0, pod.log_path.read_text()[-3000:]
    # the image ships the S3 plugin: no pod installs anything
    assert not any("pip install" in container(job)["args"][1] for job in jobs)


def test_gpu_rules_get_gpu_nodes_and_cpu_rules_cpu_nodes_without_cuda(pipeline, s3):
    """GPU jobs: a card under the profile's resource name, /dev/shm, the GPU settings' node
    affinity (product, driver), the CUDA image. Every other job: off GPU nodes (NRP's CPU-only
    affinity; the GPU nodes come first and would fit it), the CPU image, no GPU visible. Every
    job: a deadline, limits equal to requests, S3 at the in-cluster endpoint."""
    resources, defaults = PROFILE["set-resources"], PROFILE["default-resources"]
    for job in pipeline.double.accepted("Job"):
        rule, pod = rule_of(job), job["spec"]["template"]["spec"]
        requests = container(job)["resources"]["requests"]
        limits = container(job)["resources"]["limits"]
        env = {e["name"]: e.get("value") for e in container(job)["env"]}
        node = pipeline.double.pod_of(job["metadata"]["name"]).node_name
        if rule in GPU_RULES:
            assert requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"] == "1"
            assert {"name": "dshm", "emptyDir": {
                "medium": "Memory", "sizeLimit": f"{resources[rule]['shm_mb']}M"}} \
                in pod["volumes"]
            assert {"name": "dshm", "mountPath": "/dev/shm"} in container(job)["volumeMounts"]
            assert pod["affinity"] == POD_SETTINGS["gpu"]["affinity"]
            # the old-driver node comes first and has the card, but not torch's CUDA 13.0
            assert node == "rtx3090-node"
            assert container(job)["image"] == IMAGES["container-image"]
            assert "NVIDIA_VISIBLE_DEVICES" not in env  # the device plugin sets it
            assert job["spec"]["activeDeadlineSeconds"] == resources[rule]["runtime"] * 60
        else:
            assert not any(name.startswith("nvidia.com/") for name in requests)
            assert pod["affinity"] == POD_SETTINGS["cpu"]["affinity"]
            assert node == "cpu-node"
            assert container(job)["image"] == IMAGES["kubernetes-pods-cpu-image"]
            assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
            assert all(volume["name"] != "dshm" for volume in pod["volumes"])
            # a group job's runtime: its jobs' summed along the group's layers (Snakemake)
            deadline = job["spec"]["activeDeadlineSeconds"]
            runtime = resources.get(rule, {}).get("runtime", defaults["runtime"])  # fetch: a day
            assert deadline == runtime * 60 or \
                (rule.startswith("summarise") and deadline % (defaults["runtime"] * 60) == 0)
        # scale 0: limits equal requests (cpu-scalar 1.0), within Nautilus' ratio
        assert requests == limits
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "nadir"
        # the controller's endpoint travels in the run's Secret; pods get the in-cluster one
        assert env["SNAKEMAKE_STORAGE_S3_ENDPOINT_URL"] == s3.endpoint
        assert outside_endpoint(s3) not in str(job)


def stored_by(pod: Pod, prefix: str) -> list[str]:
    """The keys (under the run's prefix) a pod's job uploaded: its outputs, log, benchmark."""
    return re.findall(rf"Storing in storage: s3://{BUCKET}/{prefix}/(\S+)",
                      pod.log_path.read_text())


def stored_sizes(s3, prefix: str) -> dict[str, int]:
    """Size of every object under the run's prefix, by key relative to it."""
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                   Prefix=f"{prefix}/")
    return {item["Key"][len(prefix) + 1:]: item["Size"]
            for page in pages for item in page.get("Contents", [])}


def uploaded_bytes(sizes: dict[str, int], key: str) -> int:
    """Bytes of an uploaded output: its object, or every object under it (a directory)."""
    return sum(size for name, size in sizes.items() if name == key or name.startswith(f"{key}/"))


def test_gpu_pods_only_run_models_and_every_pod_fits_in_its_ephemeral_storage(pipeline, s3):
    """A GPU pod runs a model step and nothing else: it uploads no metrics and no figure and
    logs no scoring; the scoring and figures of the same runs come from CPU pods. Every pod
    asks for ephemeral storage (limit = request), and what its job staged and wrote, as the
    double measured its files while it ran, and the outputs it uploaded, fit in it."""
    jobs = {job["metadata"]["name"]: job for job in pipeline.double.accepted("Job")}
    sizes = stored_sizes(s3, pipeline.prefix)
    by_rule: dict[str, list[str]] = {}
    for name, job in jobs.items():
        pod = pipeline.double.pod_of(name)
        stored = stored_by(pod, pipeline.prefix)
        by_rule.setdefault(rule_of(job), []).extend(stored)
        resources = container(job)["resources"]
        request = quantity(resources["requests"]["ephemeral-storage"])
        assert resources["limits"]["ephemeral-storage"] == \
            resources["requests"]["ephemeral-storage"]
        assert 0 < pod.disk_peak <= request, (rule_of(job), pod.disk_peak, request)
        if pod not in pipeline.killed.values():  # a killed pod uploads nothing
            uploaded = sum(uploaded_bytes(sizes, key) for key in stored)
            assert 0 < uploaded <= request, (rule_of(job), uploaded, request)
        if rule_of(job) in GPU_RULES:
            assert not [key for key in stored if key.endswith((".png", "metrics.json"))], stored
            assert "-level metrics" not in pod.log_path.read_text()
    assert {rule for rule in by_rule if rule in GPU_RULES} == {"train", "evaluate"}
    model = "results/sample/models/ssdlite320_mobilenet_v3_large"
    assert f"{model}/predictions.json" in by_rule["evaluate"]
    assert by_rule["evaluate_chips"][0] == f"{model}/metrics.json"
    assert f"{model}/scene_metrics.json" in by_rule["evaluate_scenes"]
    assert f"{model}/detections.png" in by_rule["plot_detections"]


def test_killed_pod_is_retried_with_more_memory_and_its_log_is_kept(pipeline):
    killed = pipeline.killed["chip"]
    assert killed.exit_code == 137
    jobs = {job["metadata"]["name"]: job for job in pipeline.double.accepted("Job")}
    first = jobs[killed.job_name]
    target = container(first)["args"][1].split("--target-jobs ")[1].split()[0]
    retries = [job for job in jobs.values() if job is not first
               and f"--target-jobs {target}" in container(job)["args"][1]]
    assert len(retries) == 1
    assert "--attempt 1" in container(first)["args"][1]
    assert "--attempt 2" in container(retries[0])["args"][1]
    mem_mb = PROFILE["set-resources"]["chip"]["mem_mb"]  # "8000 * attempt"
    assert container(first)["resources"]["requests"]["memory"] == f"{eval(mem_mb, {'attempt': 1})}M"
    assert container(retries[0])["resources"]["requests"]["memory"] == \
        f"{eval(mem_mb, {'attempt': 2})}M"
    # the failed pod's log was fetched through the API and kept beside the controller
    kept = (pipeline.checkout / ".snakemake" / "auxiliary" / "kubernetes-logs"
            / f"{killed.job_name}.log")
    assert "Retrieving from storage" in kept.read_text()


def test_no_secret_value_in_any_spec_log_or_stored_file(pipeline, s3):
    values = [s3.access_key, s3.secret_key]
    encoded = [base64.b64encode(v.encode()).decode() for v in values]
    jobs_text = json.dumps(pipeline.double.accepted("Job"))
    # the keys reach pods only as references to the run's Secret
    secrets = pipeline.double.accepted("Secret")
    assert len(secrets) == 1
    assert {base64.b64decode(v).decode() for v in secrets[0]["data"].values()} >= set(values)
    assert f'"name": "{secrets[0]["metadata"]["name"]}"' in jobs_text
    texts = {"job specs": jobs_text, "controller stdout": pipeline.proc.stdout,
             "controller stderr": pipeline.proc.stderr}
    texts.update({f"pod log {name}": log for name, log in pipeline.double.logs().items()})
    for path in (pipeline.checkout / ".snakemake").rglob("*"):
        if path.is_file() and path.suffix in (".log", ".json", ".txt", ""):
            texts[str(path)] = path.read_text(errors="replace")
    client = s3.client()
    for item in client.list_objects_v2(Bucket=BUCKET, Prefix=pipeline.prefix)["Contents"]:
        if item["Key"].endswith((".log", ".json", ".csv", ".html")):
            texts[item["Key"]] = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"] \
                .read().decode(errors="replace")
    assert len(texts) > 20
    for where, text in texts.items():
        for secret in values + encoded:
            assert secret not in text, f"a secret value appears in {where}"


def test_rerun_is_a_no_op_and_a_training_edit_redoes_only_its_jobs(pipeline, s3):
    again = snakemake_on(pipeline.checkout, pipeline.double, s3, pipeline.prefix, "-n",
                         configfile=PIPELINE_CONFIG)
    assert again.returncode == 0, again.stderr[-4000:]
    assert planned_jobs(again) == {}
    config = yaml.safe_load((pipeline.checkout / PIPELINE_CONFIG).read_text())
    config["training"]["iterations"] += 2
    (pipeline.checkout / "config/edited.yaml").write_text(yaml.safe_dump(config))
    edited = snakemake_on(pipeline.checkout, pipeline.double, s3, pipeline.prefix, "-n",
                          configfile="config/edited.yaml")
    assert edited.returncode == 0, edited.stderr[-4000:]
    assert planned_jobs(edited) == dict.fromkeys(RUN_JOBS + SUMMARY_JOBS, 1)


def test_upstream_kubernetes_executor_still_works_with_the_s3_flags(s3, tmp_path):
    """`--executor kubernetes` without the profile: pods pip-install the S3 plugin (from PyPI).

    The fetch runs on the controller first: snakemake-storage-plugin-s3 0.3.6 remembers a
    directory output (fetch's `files/`) as absent once the DAG has looked for it, so a pod that
    writes it is reported as missing its output (docs/kubernetes.md); nadir's own executor
    plugin is what the profiles use."""
    checkout = make_checkout(tmp_path / "checkout")
    double = KubernetesDouble(tmp_path / "cluster", Path(sys.executable).parent,
                              namespace="plain").start()
    try:
        storage = ["--default-storage-provider", "s3", "--cores", "2"]
        fetched = snakemake_on(checkout, double, s3, "upstream", *storage,
                               "raw/sample/manifest.json", profile=False)
        assert fetched.returncode == 0, fetched.stderr[-6000:]
        proc = snakemake_on(checkout, double, s3, "upstream",
                            "--executor", "kubernetes", "--kubernetes-namespace", "plain",
                            "--container-image", "nadir:ci", *storage, "--jobs", "1",
                            "results/sample/index/summary.json", profile=False)
        assert proc.returncode == 0, proc.stderr[-6000:]
        [job] = double.accepted("Job")
        # the upstream plugin labels no rule: the Job's command names its target job
        assert re.search(r"--target-jobs '?index:", container(job)["args"][1])
        assert "pip install --target" in container(job)["args"][1]
        listed = s3.client().list_objects_v2(Bucket=BUCKET, Prefix="upstream/results/sample/index/")
        # the index job's outputs, written by the pod from the scenes it read from the bucket
        assert "upstream/results/sample/index/summary.json" in {
            o["Key"] for o in listed.get("Contents", [])}
    finally:
        double.stop()


def test_training_pod_preempted_after_its_first_checkpoint_resumes_from_it(pipeline, s3):
    """Preemption of a training pod by the scheduler (the pod deleted): reported as such, and
    the retry continues from the last checkpoint."""
    killed = pipeline.killed["train"]
    assert killed.exit_code == 143  # SIGTERM, then deleted
    assert f"(pod {killed.name}) failed: Preempted: " in pipeline.proc.stderr
    iterations = TRAINING["iterations"]
    # `kubectl logs` of a running training pod shows its progress (nadir copies its log there)
    assert pipeline.progress and f"/{iterations} (" in pipeline.progress[0], pipeline.progress

    def stored(key: str) -> str:
        return s3.client().get_object(Bucket=BUCKET, Key=f"{pipeline.prefix}/{key}")["Body"] \
            .read().decode()

    # the retry's own log (the killed attempt's never reached the bucket)
    retry_log = stored("logs/sample/train-ssdlite320_mobilenet_v3_large.log")
    resumed_at = int(retry_log.split("resuming from the checkpoint at iteration ")[1]
                     .split("/")[0])
    assert CHECKPOINT_EVERY <= resumed_at < iterations and resumed_at % CHECKPOINT_EVERY == 0
    run = json.loads(stored("results/sample/models/ssdlite320_mobilenet_v3_large/run.json"))
    assert run["training"]["iterations"] == iterations
    assert run["training"]["resumed_from"] == resumed_at
    # the loss log continues across the kill: one entry per interval, none repeated
    train_log = json.loads(stored("results/sample/models/ssdlite320_mobilenet_v3_large/"
                                  "train_log.json"))
    interval = TRAINING["log_interval"]
    assert [entry["iteration"] for entry in train_log] == list(
        range(interval, iterations + 1, interval))
    # a finished run removes its checkpoints
    assert checkpoint_keys(s3, pipeline.prefix) == []

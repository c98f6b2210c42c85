"""Pod settings (nadir.kubernetes) and the Kubernetes API double, without running Snakemake."""

from __future__ import annotations

import base64
import sys
import time
from pathlib import Path

import kubernetes.client
import kubernetes.config
import kubernetes_validate
import pytest
import yaml
from conftest import ROOT
from k8s_double import KubernetesDouble

from nadir.errors import InputError
from nadir.kubernetes import apply_pod_settings, label_value, load_pod_settings

PROFILE = ROOT / "profiles" / "kubernetes"


def upstream_like_job(name: str = "snakejob-1", gpu: bool = False, command: str = "true",
                      secret: str | None = None) -> dict:
    """A Job shaped like the ones snakemake-executor-plugin-kubernetes 0.5.1 builds."""
    resources = {"requests": {"cpu": "1000m", "memory": "4000M"},
                 "limits": {"cpu": "1000m", "memory": "4000M"}}
    tolerations = None
    if gpu:
        resources["requests"]["nvidia.com/gpu"] = resources["limits"]["nvidia.com/gpu"] = "1"
        tolerations = [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
                        "effect": "NoSchedule"}]
    env = [{"name": "SECRET_VALUE", "valueFrom": {"secretKeyRef": {
        "name": secret, "key": "secret_value"}}}] if secret else []
    pod = {"containers": [{"name": "snakemake", "image": "nadir:test", "command": ["/bin/sh"],
                           "args": ["-c", command], "workingDir": "/workdir", "env": env,
                           "volumeMounts": [{"name": "workdir", "mountPath": "/workdir"}],
                           "resources": resources}],
           "nodeSelector": {}, "restartPolicy": "Never",
           "volumes": [{"name": "workdir", "emptyDir": {}}]}
    if tolerations:
        pod["tolerations"] = tolerations
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": {"app": "snakemake"}},
            "spec": {"backoffLimit": 0, "template": {"spec": pod}}}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pods.yaml"
    path.write_text(text)
    return path


# --- pod settings ----------------------------------------------------------------------------
def test_shipped_pod_settings_reach_gpu_pods_only():
    settings = load_pod_settings(PROFILE / "pods.yaml")
    shipped = yaml.safe_load((PROFILE / "pods.yaml").read_text())
    gpu_job = apply_pod_settings(upstream_like_job(gpu=True), settings.for_job(True),
                                 rule="train", run_id="run-1", shm_mb=16000, deadline_s=600)
    cpu_job = apply_pod_settings(upstream_like_job(), settings.for_job(False), rule="chip",
                                 run_id="run-1")
    gpu_pod, cpu_pod = gpu_job["spec"]["template"]["spec"], cpu_job["spec"]["template"]["spec"]
    assert gpu_pod["affinity"] == shipped["gpu"]["affinity"]
    # the upstream toleration stays, the profile's is added after it
    assert gpu_pod["tolerations"][0]["value"] == "present"
    assert gpu_pod["tolerations"][1:] == shipped["gpu"]["tolerations"]
    assert "affinity" not in cpu_pod and "tolerations" not in cpu_pod
    for job in (gpu_job, cpu_job):
        for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
            assert labels["app.kubernetes.io/part-of"] == "nadir"
            assert labels["snakemake-run"] == "run-1"
    assert gpu_job["spec"]["template"]["metadata"]["labels"]["snakemake-rule"] == "train"
    assert gpu_job["spec"]["activeDeadlineSeconds"] == 600
    assert "activeDeadlineSeconds" not in cpu_job["spec"]
    for job in (gpu_job, cpu_job):
        kubernetes_validate.validate(job, "1.33", strict=True)


def test_shm_volume_is_memory_backed_and_mounted_in_the_snakemake_container():
    job = apply_pod_settings(upstream_like_job(), load_pod_settings(PROFILE / "pods.yaml")
                             .for_job(False), rule="train", run_id="r", shm_mb=8192)
    pod = job["spec"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8192M"}} \
        in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    # the upstream workdir volume is kept
    assert {"name": "workdir", "mountPath": "/workdir"} in pod["containers"][0]["volumeMounts"]


def test_scopes_merge_and_pull_secrets_accept_bare_names(tmp_path):
    path = write(tmp_path, """
all:
  labels: {team: vision, tier: batch}
  nodeSelector: {pool: general}
  imagePullSecrets: [regcred]
gpu:
  labels: {tier: gpu}
  nodeSelector: {pool: gpu}
  imagePullSecrets: [{name: gpu-registry}]
""")
    gpu = load_pod_settings(path).for_job(True)
    assert gpu.labels == {"team": "vision", "tier": "gpu"}
    assert gpu.nodeSelector == {"pool": "gpu"}
    assert gpu.imagePullSecrets == [{"name": "regcred"}, {"name": "gpu-registry"}]
    job = apply_pod_settings(upstream_like_job(gpu=True), gpu, rule="evaluate", run_id="r")
    assert job["spec"]["template"]["spec"]["imagePullSecrets"] == gpu.imagePullSecrets
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}
    kubernetes_validate.validate(job, "1.33", strict=True)


@pytest.mark.parametrize(("text", "expected"), [
    ("gpus: {}\n", "unknown top-level key(s) ['gpus']"),
    ("all: {tolerance: []}\n", "`all` has unknown key(s) ['tolerance']"),
    ("gpu: {tolerations: {key: x}}\n", "`gpu.tolerations` must be a list"),
    ("all: {labels: {replicas: 3}}\n", "`all.labels.replicas` must be a string"),
    ("all: {imagePullSecrets: [{secret: x}]}\n", "`all.imagePullSecrets[0]`"),
    ("- all\n", "expected a mapping"),
])
def test_bad_pod_settings_name_the_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as caught:
        load_pod_settings(path)
    assert str(path) in str(caught.value) and expected in str(caught.value)


def test_yaml_error_gives_the_line(tmp_path):
    path = write(tmp_path, "all:\n  labels: {a: b\n  tolerations: []\n")
    with pytest.raises(InputError) as caught:
        load_pod_settings(path)
    assert caught.value.line is not None and caught.value.line >= 2


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read the pod settings file"):
        load_pod_settings(tmp_path / "absent.yaml")


def test_label_values_are_made_valid():
    assert label_value("generate_sample_xview-2") == "generate_sample_xview-2"
    assert label_value("a" * 70) == "a" * 63
    assert label_value("_rule with spaces_") == "rule-with-spaces"


# --- the API double, through the real Kubernetes client -------------------------------------
@pytest.fixture
def api(tmp_path):
    double = KubernetesDouble(tmp_path / "k8s", Path(sys.executable).parent,
                              namespace="nadir-ci").start()
    client = kubernetes.config.new_client_from_config(str(double.kubeconfig))
    yield double, kubernetes.client.CoreV1Api(client), kubernetes.client.BatchV1Api(client)
    double.stop()


def wait_finished(double: KubernetesDouble, batch, name: str) -> dict:
    def finished():
        status = batch.read_namespaced_job_status(name, double.namespace).status
        return status if (status.succeeded or status.failed) else None
    return double.wait_for(finished, 60, f"job {name}")


def create_secret(core, namespace: str, name: str, value: str) -> None:
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": name}, "type": "Opaque",
        "data": {"secret_value": base64.b64encode(value.encode()).decode()}})


def test_double_runs_a_job_with_secret_env_in_an_empty_directory(api, tmp_path, monkeypatch):
    double, core, batch = api
    create_secret(core, double.namespace, "run-secret", "s3cr3t")
    monkeypatch.chdir(tmp_path)  # a file beside the controller is not in the pod
    (tmp_path / "undeclared.txt").write_text("local only")
    command = ('echo "value=$SECRET_VALUE"; ls -A | wc -l; echo "python=$(command -v python)"; '
               'test -e undeclared.txt || echo "no shared files"')
    batch.create_namespaced_job(double.namespace,
                                upstream_like_job("job-a", command=command, secret="run-secret"))
    status = wait_finished(double, batch, "job-a")
    assert status.succeeded == 1
    pods = core.list_namespaced_pod(double.namespace, label_selector="job-name=job-a").items
    assert len(pods) == 1
    assert pods[0].status.container_statuses[0].state.terminated.exit_code == 0
    log = core.read_namespaced_pod_log(pods[0].metadata.name, double.namespace,
                                       container="snakemake")
    assert "value=s3cr3t" in log
    assert log.splitlines()[1].strip() == "0"  # the working directory starts empty
    assert f"python={Path(sys.executable).parent}/python" in log
    assert "no shared files" in log
    # a container that never restarted has no previous log, as the kubelet says
    with pytest.raises(kubernetes.client.ApiException) as caught:
        core.read_namespaced_pod_log(pods[0].metadata.name, double.namespace,
                                     container="snakemake", previous=True)
    assert caught.value.status == 400
    batch.delete_namespaced_job("job-a", double.namespace, propagation_policy="Foreground")
    assert core.list_namespaced_pod(double.namespace, label_selector="job-name=job-a").items == []
    core.delete_namespaced_secret("run-secret", double.namespace)
    assert [r.kind for r in double.received] == ["Secret", "Job"]


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda job: job["spec"]["template"]["spec"]["containers"][0]["resources"].pop("limits"),
     None),  # GPU without a limit
    (lambda job: job["spec"]["template"]["spec"].update(shmSize="1G"), "spec.template.spec"),
    (lambda job: job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"].append(
        {"name": "dshm", "mountPath": "/dev/shm"}),
     "spec.template.spec.containers[0].volumeMounts[1].name"),
    (lambda job: job["metadata"].update(name="Snakejob_1"), "metadata.name"),
    (lambda job: job["spec"]["template"]["spec"].update(restartPolicy="Always"),
     "spec.template.spec.restartPolicy"),
    (lambda job: job["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
     .update(memory="4 GB"), "spec.template.spec.containers[0].resources.requests[memory]"),
])
def test_double_answers_invalid_jobs_with_422_and_keeps_them(api, mutate, field):
    double, _, batch = api
    job = upstream_like_job("job-bad", gpu=True)
    mutate(job)
    with pytest.raises(kubernetes.client.ApiException) as caught:
        batch.create_namespaced_job(double.namespace, job)
    assert caught.value.status == 422
    status = yaml.safe_load(caught.value.body)
    assert status["kind"] == "Status" and status["reason"] == "Invalid"
    if field:
        assert status["details"]["causes"][0]["field"] == field
    else:
        assert "Limit must be set for non overcommitable resources" in status["message"]
    assert [r.accepted for r in double.received] == [False]
    assert double.jobs == {} and double.pods == {}


def test_double_refuses_wrong_token_and_duplicate_names(api):
    double, _, batch = api
    batch.create_namespaced_job(double.namespace, upstream_like_job("job-a"))
    with pytest.raises(kubernetes.client.ApiException) as caught:
        batch.create_namespaced_job(double.namespace, upstream_like_job("job-a"))
    assert caught.value.status == 409
    stranger = kubernetes.client.Configuration()
    stranger.host, stranger.api_key = double.url, {"authorization": "Bearer wrong"}
    with pytest.raises(kubernetes.client.ApiException) as caught:
        kubernetes.client.BatchV1Api(kubernetes.client.ApiClient(stranger)) \
            .read_namespaced_job_status("job-a", double.namespace)
    assert caught.value.status == 401


def test_killed_pod_fails_its_job_with_exit_code_137(api):
    double, core, batch = api
    batch.create_namespaced_job(double.namespace,
                                upstream_like_job("job-k", command="echo started; sleep 60"))
    pod = double.wait_for(
        lambda: next((p for p in double.all_pods() if p.job_name == "job-k" and p.log_path.exists()
                      and "started" in p.log_path.read_text()), None), 30, "pod start")
    double.kill(pod.name)
    started = time.monotonic()
    status = wait_finished(double, batch, "job-k")
    assert time.monotonic() - started < 30
    assert status.failed == 1 and status.conditions[0].reason == "BackoffLimitExceeded"
    state = core.list_namespaced_pod(double.namespace, label_selector="job-name=job-k") \
        .items[0].status.container_statuses[0].state.terminated
    assert state.exit_code == 137 and state.reason == "Evicted"


def test_active_deadline_ends_a_job(api):
    double, _, batch = api
    job = upstream_like_job("job-d", command="sleep 60")
    job["spec"]["activeDeadlineSeconds"] = 1
    batch.create_namespaced_job(double.namespace, job)
    status = wait_finished(double, batch, "job-d")
    assert status.failed == 1 and status.conditions[0].reason == "DeadlineExceeded"

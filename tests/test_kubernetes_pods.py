"""Pod settings (the executor package's pod_settings) and the Kubernetes API double, without
running Snakemake."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import kubernetes.client
import kubernetes.config
import kubernetes_validate
import pytest
import urllib3
import yaml
from conftest import ROOT
from k8s_double import KubernetesDouble, PodWebhook, Role, nautilus_namespace, role_from_manifests

from nadir.core.errors import InputError
from snakemake_executor_plugin_kubernetes_pods import CredentialTimeout, _BoundedApiClient
from snakemake_executor_plugin_kubernetes_pods.pod_settings import (
    COMMAND_ANNOTATION,
    JOB_LABEL,
    POD_ENVIRONMENT,
    S3_ENDPOINT_VARIABLE,
    PodSettings,
    apply_pod_settings,
    command_fingerprint,
    label_value,
    load_pod_settings,
)
from snakemake_executor_plugin_kubernetes_pods.pod_status import (
    Failed,
    Stuck,
    assess,
    disrupted_pod,
    log_tail,
    quota_never_fits,
)

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
    # pods without a GPU get the `cpu` scope: off GPU nodes
    assert cpu_pod["affinity"] == shipped["cpu"]["affinity"] and "tolerations" not in cpu_pod
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


CLASSES = """
gpu:
  gpuResource: nvidia.com/gpu
  nodeSelector: {tier: gpu}
gpu_classes:
  big:
    gpuResource: nvidia.com/a100
    priorityClassName: opportunistic
    nodeSelector: {card: a100}
models:
  convnext: big
"""


def test_a_gpu_class_by_model_or_rule_sets_resource_name_priority_and_selector(tmp_path):
    settings = load_pod_settings(write(tmp_path, CLASSES))
    assert settings.gpu_class(rule_class=None, model="convnext") == "big"
    assert settings.gpu_class(rule_class="big", model="ssd") == "big"
    assert settings.gpu_class(rule_class=None, model="ssd") is None
    # a sweep cell or a repeat of a model (its run name) runs on the model's class
    assert settings.gpu_class(rule_class=None, model="convnext--lr-0.001") == "big"
    assert settings.gpu_class(rule_class=None, model="convnext--repeat-2") == "big"
    job = apply_pod_settings(upstream_like_job(gpu=True), settings.for_job(True, "big"),
                             rule="train", run_id="r")
    pod = job["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/a100"] == resources["limits"]["nvidia.com/a100"]
    assert "nvidia.com/gpu" not in resources["requests"]
    assert pod["priorityClassName"] == "opportunistic"
    assert pod["nodeSelector"] == {"tier": "gpu", "card": "a100"}
    kubernetes_validate.validate(job, "1.33", strict=True)
    # a CPU job ignores GPU classes
    cpu = apply_pod_settings(upstream_like_job(), settings.for_job(False, "big"), rule="index",
                             run_id="r")
    assert "priorityClassName" not in cpu["spec"]["template"]["spec"]
    with pytest.raises(KeyError, match="GPU class 'huge' is not in"):
        settings.for_job(True, "huge")


def test_a_group_job_runs_on_the_class_of_the_model_its_jobs_share():
    """A profile's `groups:` makes group jobs, which have no wildcards of their own."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_kubernetes_pods import _model_of

    def job(model: str | None):
        return SimpleNamespace(is_group=lambda: False,
                               wildcards_dict={"model": model} if model else {})

    def group(*members):
        return SimpleNamespace(is_group=lambda: True, jobs=members)

    assert _model_of(job("convnext")) == "convnext"
    assert _model_of(group(job("convnext"), job("convnext"))) == "convnext"
    assert _model_of(group(job("convnext"), job("ssd"))) is None
    assert _model_of(group(job(None), job(None))) is None


def test_gpu_limit_is_added_and_pods_get_their_environment():
    job = upstream_like_job(gpu=True)
    job["spec"]["template"]["spec"]["containers"][0]["resources"].pop("limits")
    amended = apply_pod_settings(job, load_pod_settings(PROFILE / "pods.yaml").for_job(True),
                                 rule="train", run_id="r", requests_gpu=True,
                                 image="nadir:cpu", s3_endpoint="http://rgw.inside")
    container = amended["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env == {**POD_ENVIRONMENT, S3_ENDPOINT_VARIABLE: "http://rgw.inside"}
    assert container["image"] == "nadir:test"  # the CUDA image: the CPU one is for CPU pods


def test_pods_without_a_gpu_run_the_cpu_image_and_see_no_gpu():
    """A CPU pod on a GPU node must not see the node's GPUs (images built for CUDA often set
    NVIDIA_VISIBLE_DEVICES=all); it runs the image without CUDA."""
    amended = apply_pod_settings(upstream_like_job(), load_pod_settings(PROFILE / "pods.yaml")
                                 .for_job(False), rule="chip", run_id="r", image="nadir:cpu")
    container = amended["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env == {**POD_ENVIRONMENT, "NVIDIA_VISIBLE_DEVICES": "void"}
    assert container["image"] == "nadir:cpu"
    kubernetes_validate.validate(amended, "1.33", strict=True)


def test_every_job_is_labelled_for_adoption_and_fails_on_a_disruption():
    amended = apply_pod_settings(upstream_like_job(), PodSettings(), rule="chip", run_id="run-1",
                                 job_key="k" * 40, fingerprint="f" * 64)
    assert amended["metadata"]["labels"][JOB_LABEL] == "k" * 40
    assert amended["metadata"]["annotations"][COMMAND_ANNOTATION] == "f" * 64
    # a preempted or evicted pod fails its Job with a reason that says so (not exit code 143)
    assert amended["spec"]["podFailurePolicy"] == {"rules": [{
        "action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}
    kubernetes_validate.validate(amended, "1.33", strict=True)


def test_a_commands_fingerprint_ignores_attempt_and_archive_name_not_its_content():
    command = ("python -m snakemake --deploy-sources s3://b/p/snakemake-workflow-sources."
               "{c}.tar.xz {c} && python -m snakemake --target-jobs 'chip:shard=001' "
               "--attempt {a} --rerun-triggers {triggers}")
    first = command_fingerprint(command.format(c="ab12", a=1, triggers="code mtime"),
                                "sources-1")
    # a retry, or a fresh clone (new file times, so a new archive checksum), or another process
    # (which writes a set's values in another order): the same job
    assert command_fingerprint(command.format(c="cd34", a=2, triggers="mtime code"),
                               "sources-1") == first
    # other sources, or another target: not the same
    same = command.format(c="ab12", a=1, triggers="code mtime")
    assert command_fingerprint(same, "sources-2") != first
    assert command_fingerprint(same.replace("001", "002"), "sources-1") != first


@pytest.mark.parametrize(("text", "expected"), [
    ("gpu_classes: {big: {gpuResource: a100}}\n", "`gpu_classes.big.gpuResource` must be"),
    ("gpu_classes: {}\nmodels: {convnext: big}\n", "`models.convnext` names GPU class 'big'"),
    ("all: {priorityClassName: [a]}\n", "`all.priorityClassName` must be a str"),
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


# --- why a job is not running (pod_status) --------------------------------------
def pod_json(name="p-1", phase="Pending", state=None, conditions=None, reason=None):
    status = {"phase": phase, "conditions": conditions or []}
    if state is not None:
        status["containerStatuses"] = [{"name": "snakemake", "state": state}]
    if reason:
        status.update(reason=reason, message=f"{reason} message")
    return {"metadata": {"name": name}, "status": status}


def event(reason, message, kind="Warning"):
    return {"type": kind, "reason": reason, "message": message, "lastTimestamp": "t"}


FAILED_JOB = {"status": {"conditions": [{"type": "Failed", "status": "True",
                                          "reason": "BackoffLimitExceeded"}]}}


def disrupted(reason="PreemptionByScheduler"):
    return pod_json(phase="Running", state={"running": {}}, conditions=[{
        "type": "DisruptionTarget", "status": "True", "reason": reason,
        "message": "default-scheduler: preempting to accommodate a higher priority pod"}])


POLICY_FAILED_JOB = {"status": {"conditions": [{
    "type": "Failed", "status": "True", "reason": "PodFailurePolicy",
    "message": "Pod ns/p-1 has condition DisruptionTarget matching FailJob rule at index 0"}]}}
QUOTA_NOW = ('pods "x" is forbidden: exceeded quota: q, requested: requests.nvidia.com/gpu=1, '
             "used: requests.nvidia.com/gpu=4, limited: requests.nvidia.com/gpu=4")
QUOTA_NEVER = ('pods "x" is forbidden: exceeded quota: gpu-quota, requested: '
               "requests.nvidia.com/a100=1, used: requests.nvidia.com/a100=0, limited: "
               "requests.nvidia.com/a100=0")


@pytest.mark.parametrize(("job", "pod", "events", "expected"), [
    ({}, pod_json(phase="Running", state={"running": {}}), [], None),
    # scheduled, container not started: volumes, sandbox or image pull; named with the event
    ({}, pod_json(state={"waiting": {"reason": "ContainerCreating"}}),
     [event("Pulling", 'Pulling image "nadir:cu130"', kind="Normal")],
     Stuck("ContainerCreating", 'event Pulling: Pulling image "nadir:cu130"', "p-1")),
    ({}, pod_json(state={"waiting": {"reason": "ContainerCreating"}}),
     [event("Pulling", "Pulling image", kind="Normal"),
      event("FailedMount", 'MountVolume.SetUp failed for volume "dshm"')],
     Stuck("ContainerCreating", 'event FailedMount: MountVolume.SetUp failed for volume "dshm"',
           "p-1")),
    ({}, pod_json(), [], Stuck("Pending", "not scheduled or started yet", "p-1")),
    ({}, pod_json(state={"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}),
     [event("Failed", "Failed to pull image")],
     Failed("ImagePullBackOff", "not found; event Failed: Failed to pull image", "p-1")),
    ({}, pod_json(conditions=[{"type": "PodScheduled", "status": "False",
                               "reason": "Unschedulable", "message": "0/3 nodes"}]), [],
     Stuck("Unschedulable", "0/3 nodes", "p-1", queued=True)),
    (FAILED_JOB, pod_json(phase="Failed", state={"terminated": {"exitCode": 137,
                                                                "reason": "OOMKilled"}}), [],
     Failed("OOMKilled", "exit code 137 (killed: out of memory, or by the node)", "p-1")),
    (FAILED_JOB, pod_json(phase="Failed", reason="Evicted"), [],
     Failed("Evicted", "Evicted message", "p-1")),
    ({"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                 "message": "Job was active longer than specified deadline"}]}},
     pod_json(phase="Failed", state={"terminated": {"exitCode": 143, "reason": "Error"}}), [],
     Failed("DeadlineExceeded", "Job was active longer than specified deadline", "p-1")),
    # preempted: the pod's condition while it stops, or the Job's failure and the scheduler's
    # event once it is deleted; never "exit code 143"
    ({}, disrupted(), [], Failed("Preempted", "PreemptionByScheduler: default-scheduler: "
                                              "preempting to accommodate a higher priority pod; "
                                              "the job is retried", "p-1")),
    ({}, disrupted("EvictionByEvictionAPI"), [], Failed(
        "Evicted", "EvictionByEvictionAPI: default-scheduler: preempting to accommodate a "
                   "higher priority pod; the job is retried", "p-1")),
    (POLICY_FAILED_JOB, None, [event("Preempted", "Preempted by pod 1 on node n", "Normal")],
     Failed("Preempted", "event Preempted: Preempted by pod 1 on node n; "
                         f"{POLICY_FAILED_JOB['status']['conditions'][0]['message']}; "
                         "the job is retried", "p-1")),
    (POLICY_FAILED_JOB, None, [], Failed(
        "Disrupted", f"{POLICY_FAILED_JOB['status']['conditions'][0]['message']}; preempted, "
                     "evicted or its node lost; the job is retried", "p-1")),
    # a pod refused at creation: a quota that may clear waits (in the queue), other refusals
    # cannot clear by waiting and fail at once
    ({}, None, [event("FailedCreate", QUOTA_NOW)], Stuck("FailedCreate", QUOTA_NOW, queued=True)),
    ({}, None, [event("FailedCreate", QUOTA_NEVER)], Failed("FailedCreate", QUOTA_NEVER)),
    ({}, None, [event("FailedCreate", 'pods "x" is forbidden: no PriorityClass with name '
                                      "opportunstic was found")],
     Failed("FailedCreate", 'pods "x" is forbidden: no PriorityClass with name opportunstic '
                            "was found")),
    ({}, None, [event("FailedCreate", 'pods "x" is forbidden: maximum cpu usage per Container '
                                      "is 16, but limit is 32")],
     Failed("FailedCreate", 'pods "x" is forbidden: maximum cpu usage per Container is 16, but '
                            "limit is 32")),
    ({}, None, [], Stuck("PodNotCreated", "the Job has created no pod yet and says nothing "
                                          "about why")),
])
def test_assess_names_reason_and_detail(job, pod, events, expected):
    assert assess(job, pod, events) == expected


def test_quota_never_fits_only_when_the_request_exceeds_the_limit():
    message = ("exceeded quota: q, requested: requests.memory={r}, used: requests.memory=1Gi, "
               "limited: requests.memory=16Gi")
    assert quota_never_fits(message.format(r="20000M"))
    assert not quota_never_fits(message.format(r="8Gi"))
    assert not quota_never_fits("forbidden: something else")


def test_log_tail_starts_at_the_last_traceback_when_it_is_near():
    lines = [f"line {n}" for n in range(100)]
    log = "\n".join(lines[:50] + ["Traceback (most recent call last):", "  boom"] + lines[50:60])
    tail = log_tail(log, 5)
    assert tail.splitlines()[0] == "    Traceback (most recent call last):"
    assert tail.splitlines()[-1] == "    line 59"
    assert log_tail("\n".join(lines), 3) == "    line 97\n    line 98\n    line 99"


@pytest.mark.parametrize("switched_on", [True, False])
def test_nadir_copies_its_log_and_traceback_to_stdout_only_in_pods(tmp_path, switched_on):
    """A rule's script (nadir.core.jobs.run_job): the log file always gets everything; stdout
    (the pod's output, what `kubectl logs` shows) gets a copy only with NADIR_TEE_STDERR=1."""
    env = {k: v for k, v in os.environ.items() if k != "NADIR_TEE_STDERR"}
    if switched_on:
        env["NADIR_TEE_STDERR"] = "1"
    log = tmp_path / "rule.log"
    script = ("from types import SimpleNamespace; from nadir.core.jobs import run_job; "
              "from nadir.report import plot_loss_curve; "
              f"run_job(SimpleNamespace(log=[{str(log)!r}], rule='loss_curve'), "
              f"lambda: plot_loss_curve({str(tmp_path / 'missing.json')!r}, 'x.png', 't'))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert "FileNotFoundError" in log.read_text()
    assert proc.stderr == ""  # all of it went to the log
    assert ("Traceback (most recent call last)" in proc.stdout) is switched_on


# --- what the double learnt for issue 26, through the real client ----------------------------
CONTROLLER = ROOT / "profiles" / "nautilus" / "controller.yaml"


def double_api(tmp_path, **options):
    double = KubernetesDouble(tmp_path / "k8s", Path(sys.executable).parent,
                              namespace="nadir-ci", **options).start()
    client = kubernetes.config.new_client_from_config(str(double.kubeconfig))
    return double, kubernetes.client.CoreV1Api(client), kubernetes.client.BatchV1Api(client)


def test_the_documented_role_allows_what_the_executor_does_and_nothing_else(tmp_path):
    role = role_from_manifests(CONTROLLER, "nadir-ci")
    double, core, batch = double_api(tmp_path, role=role)
    try:
        batch.create_namespaced_job(double.namespace, upstream_like_job("job-r"))
        batch.read_namespaced_job_status("job-r", double.namespace)  # jobs/status: allowed
        batch.list_namespaced_job(double.namespace, label_selector="snakemake-run=x")
        core.list_namespaced_pod(double.namespace, label_selector="job-name=job-r")
        core.list_namespaced_event(double.namespace, field_selector="involvedObject.name=x")
        with pytest.raises(kubernetes.client.ApiException) as caught:
            core.list_namespaced_config_map(double.namespace)
        assert caught.value.status == 403
        assert json.loads(caught.value.body)["message"] == (
            'configmaps is forbidden: User "system:serviceaccount:nadir-ci:nadir-controller" '
            'cannot list resource "configmaps" in API group "" in the namespace "nadir-ci"')
    finally:
        double.stop()
    # the Role of the first round lacked jobs/status: every status read was refused
    without_status = Role(tuple(r for r in role.rules if "jobs/status" not in r["resources"]),
                          role.user)
    double, _, batch = double_api(tmp_path / "second", role=without_status)
    try:
        batch.create_namespaced_job(double.namespace, upstream_like_job("job-s"))
        with pytest.raises(kubernetes.client.ApiException) as caught:
            batch.read_namespaced_job_status("job-s", double.namespace)
        assert caught.value.status == 403
        assert 'cannot get resource "jobs/status" in API group "batch"' \
            in json.loads(caught.value.body)["message"]
    finally:
        double.stop()


def refused_pods(double, batch, *jobs) -> dict[str, str]:
    """Create the Jobs; the FailedCreate event of each whose pod admission refused."""
    for job in jobs:
        batch.create_namespaced_job(double.namespace, job)
    return {e["involvedObject"]["name"]: e["message"] for e in double.events
            if e["reason"] == "FailedCreate"}


def gpu_job(name: str, resource: str, priority: str | None = None) -> dict:
    job = upstream_like_job(name, gpu=True)
    pod = job["spec"]["template"]["spec"]
    for amounts in pod["containers"][0]["resources"].values():
        amounts[resource] = amounts.pop("nvidia.com/gpu")
    if priority:
        pod["priorityClassName"] = priority
    return job


def test_a_fresh_nautilus_namespace_refuses_gated_gpus_unless_opportunistic(tmp_path):
    double, _, batch = double_api(tmp_path, **nautilus_namespace())
    try:
        refused = refused_pods(
            double, batch, gpu_job("a100", "nvidia.com/a100"), gpu_job("h100", "nvidia.com/h100"),
            gpu_job("a40", "nvidia.com/a40"), gpu_job("opp", "nvidia.com/h100", "opportunistic"),
            gpu_job("typo", "nvidia.com/gpu", "opportunstic"),
            gpu_job("banned", "nvidia.com/gpu", "nice"))
        assert sorted(refused) == ["a100", "banned", "h100", "typo"]
        assert ("exceeded quota: gpu-quota, requested: requests.nvidia.com/a100=1, used: "
                "requests.nvidia.com/a100=0, limited: requests.nvidia.com/a100=0") \
            in refused["a100"]
        assert "no PriorityClass with name opportunstic was found" in refused["typo"]
        assert "exceeded quota: high-priority-ban, requested: pods=1" in refused["banned"]
        assert double.jobs["a100"].pod is None and double.jobs["opp"].pod is not None
        # what the executor makes of them: the gated quota and the ban never fit, the typo
        # cannot clear; all fail at once
        for name in ("a100", "typo", "banned"):
            verdict = assess({}, None, [e for e in double.events
                                        if e["involvedObject"]["name"] == name])
            assert type(verdict) is Failed and verdict.reason == "FailedCreate", name
    finally:
        double.stop()


def test_limit_range_and_webhook_refuse_a_pod_at_creation(tmp_path):
    webhook = PodWebhook("images.example.org", lambda pod: "images must come from the "
                         "cluster's registry" if "nadir:test" in str(pod) else None)
    double, _, batch = double_api(tmp_path, limit_range={"cpu": "500m"})
    try:
        refused = refused_pods(double, batch, upstream_like_job("big"))
        assert "maximum cpu usage per Container is 500m, but limit is 1000m" in refused["big"]
    finally:
        double.stop()
    double, _, batch = double_api(tmp_path / "hook", pod_webhooks=[webhook])
    try:
        refused = refused_pods(double, batch, upstream_like_job("hooked"))
        assert refused["hooked"].endswith('admission webhook "images.example.org" denied the '
                                          "request: images must come from the cluster's registry")
    finally:
        double.stop()


def test_a_pod_can_stay_in_container_creating_with_the_kubelets_event(tmp_path):
    double, core, batch = double_api(tmp_path, stuck_creating={
        "job-name=stuck": ("FailedMount", 'MountVolume.SetUp failed for volume "dshm"')})
    try:
        batch.create_namespaced_job(double.namespace, upstream_like_job("stuck"))
        [pod] = core.list_namespaced_pod(double.namespace, label_selector="job-name=stuck").items
        assert pod.status.phase == "Pending"
        assert pod.status.container_statuses[0].state.waiting.reason == "ContainerCreating"
        serialize = core.api_client.sanitize_for_serialization
        events = [serialize(e) for e in core.list_namespaced_event(
            double.namespace, field_selector=f"involvedObject.name={pod.metadata.name}").items]
        assert assess({}, serialize(pod), events) == Stuck(
            "ContainerCreating", 'event FailedMount: MountVolume.SetUp failed for volume "dshm"',
            pod.metadata.name)
    finally:
        double.stop()


def test_a_preempted_pod_is_deleted_and_its_job_says_why(tmp_path):
    double, core, batch = double_api(tmp_path)
    try:
        job = apply_pod_settings(upstream_like_job("victim", command="echo started; sleep 60"),
                                 PodSettings(), rule="train", run_id="r")
        batch.create_namespaced_job(double.namespace, job)
        pod = double.wait_for(lambda: next((p for p in double.all_pods() if p.log_path.exists()
                                            and "started" in p.log_path.read_text()), None),
                              30, "pod start")
        double.preempt(pod.name)
        status = wait_finished(double, batch, "victim")
        assert pod.exit_code == 143  # SIGTERM: what upstream would have reported
        assert core.list_namespaced_pod(double.namespace,
                                        label_selector="job-name=victim").items == []
        serialize = batch.api_client.sanitize_for_serialization
        job_json = {"status": serialize(status)}
        assert disrupted_pod(job_json) == pod.name
        events = [serialize(e) for e in core.list_namespaced_event(
            double.namespace, field_selector=f"involvedObject.name={pod.name}").items]
        verdict = assess(job_json, None, events)
        assert verdict.reason == "Preempted" and verdict.pod == pod.name
        assert "has condition DisruptionTarget matching FailJob rule at index 0" in verdict.detail
    finally:
        double.stop()


def test_api_calls_and_credential_refreshes_end_at_their_timeout(tmp_path):
    """A hung API server, and an exec credential plugin that waits forever (kubelogin waiting
    for a browser login): each call ends after the timeout, the executor's lock is free."""
    double, _, _ = double_api(tmp_path)
    plugin, marker, pids = tmp_path / "credential.py", tmp_path / "issued", tmp_path / "pids"
    try:
        # urllib3 asks again after a read timeout, three times by default
        double.inject_faults("GET", r"/jobs/[^/]+/status$", *["hang"] * 4)
        client = _BoundedApiClient(
            kubernetes.config.new_client_from_config(str(double.kubeconfig)).configuration, 0.5)
        started = time.monotonic()
        with pytest.raises(urllib3.exceptions.MaxRetryError, match="Read timed out"):
            kubernetes.client.BatchV1Api(client).read_namespaced_job_status("x", "nadir-ci")
        assert time.monotonic() - started < 10

        # a token that expires at once, and a plugin that never answers the second time
        plugin.write_text(textwrap.dedent(f"""
            import json, os, pathlib, time
            pathlib.Path({str(pids)!r}).open("a").write(f"{{os.getpid()}}\\n")
            marker = pathlib.Path({str(marker)!r})
            if marker.exists():
                time.sleep(600)
            marker.write_text("1")
            print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1beta1",
                              "kind": "ExecCredential", "status": {{
                                  "token": {double.token!r},
                                  "expirationTimestamp": "2000-01-01T00:00:00Z"}}}}))
            """))
        config = yaml.safe_load(double.kubeconfig.read_text())
        config["users"][0]["user"] = {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable,
            "args": [str(plugin)], "interactiveMode": "Never"}}
        kubeconfig = tmp_path / "oidc-kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(config))
        client = _BoundedApiClient(
            kubernetes.config.new_client_from_config(str(kubeconfig)).configuration, 0.5)
        lock = threading.Lock()
        started = time.monotonic()
        with pytest.raises(CredentialTimeout, match="did not finish within 0.5 s"), lock:
            kubernetes.client.CoreV1Api(client).list_namespaced_pod("nadir-ci")
        assert time.monotonic() - started < 10 and not lock.locked()
    finally:
        double.stop()
        for pid in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def test_ephemeral_storage_a_pod_asks_for_is_scheduled_and_what_it_writes_is_enforced(tmp_path):
    """A node's disk is a resource like its CPUs: a pod asking for more than any node has
    stays Pending, with the scheduler's words; a container whose files outgrow its limit is
    evicted with the kubelet's message; one within it finishes, its peak use recorded."""
    from k8s_double import Node

    node = Node("node", allocatable={"cpu": "8", "memory": "32Gi", "ephemeral-storage": "50Gi"})
    double = KubernetesDouble(tmp_path / "k8s", Path(sys.executable).parent, namespace="nadir-ci",
                              nodes=[node]).start()
    try:
        batch = kubernetes.client.BatchV1Api(
            kubernetes.config.new_client_from_config(str(double.kubeconfig)))

        def job(name: str, disk: str, command: str) -> None:
            manifest = upstream_like_job(name, command=command)
            resources = manifest["spec"]["template"]["spec"]["containers"][0]["resources"]
            resources["requests"]["ephemeral-storage"] = resources["limits"][
                "ephemeral-storage"] = disk
            batch.create_namespaced_job(double.namespace, manifest)

        job("too-big", "60G", "true")
        job("outgrows", "2M", "head -c 4000000 /dev/zero > chips.tar; sleep 30")
        job("fits", "8M", "head -c 4000000 /dev/zero > chips.tar; sleep 1")
        pending = double.pod_of("too-big")
        assert pending.phase == "Pending" and pending.unschedulable.startswith(
            "0/1 nodes are available: 1 Insufficient ephemeral-storage.")
        assert wait_finished(double, batch, "outgrows").failed == 1
        evicted = double.pod_of("outgrows")
        assert (evicted.status_reason, evicted.status_message) == (
            "Evicted", 'Container snakemake exceeded its local ephemeral storage limit "2M". ')
        assert wait_finished(double, batch, "fits").succeeded == 1
        assert 4_000_000 <= double.pod_of("fits").disk_peak <= 8_000_000
    finally:
        double.stop()

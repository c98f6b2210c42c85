"""Stuck and failing pods end the job fast, naming pod, reason and event text; API errors are
ridden out; stopping the controller leaves nothing behind.

Each scenario runs Snakemake with the `kubernetes-pods` executor against the API double
(tests/k8s_double.py) and SeaweedFS, on a tiny workflow of one-line rules written here, so a run
takes seconds, not the pipeline's minutes. Every run has a hard timeout; the scenarios that
fail fast assert they ended within two minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import kubernetes.client
import kubernetes.config
import pytest
from conftest import ROOT
from k8s_double import (
    ApiError,
    KubernetesDouble,
    Node,
    Pod,
    PodWebhook,
    Role,
    nautilus_namespace,
    quantity,
    role_from_manifests,
)

pytestmark = pytest.mark.slow  # Snakemake runs through the API double

BUCKET = "nadir-k8s-failures"
HARD_TIMEOUT_S = 240
FAST_S = 120
# A task that says it started, then works until stopped.
LONG_TASK = r"""python -c \"import time; print('task started', flush=True); time.sleep(300)\""""
SNAKEFILE = f'''
rule unschedulable:
    output: "out/unschedulable.txt"
    resources: gpu=1, gpu_manufacturer="nvidia"
    shell: "echo never > {{output}}"

rule over_quota:
    output: "out/over_quota.txt"
    resources: mem_mb=20000
    shell: "echo never > {{output}}"

rule oom:
    output: "out/oom.txt"
    shell: "{LONG_TASK}"

rule evicted:
    output: "out/evicted.txt"
    shell: "{LONG_TASK}"

rule deadline:
    output: "out/deadline.txt"
    shell: "{LONG_TASK}"

rule crash:
    output: "out/crash.txt"
    log: "logs/crash.log"
    script: "crash.py"

rule fine:
    output: "out/fine.txt"
    shell: "echo done > {{output}}"

rule preempted:
    output: "out/preempted.txt"
    shell: "{LONG_TASK}"

rule container_creating:
    output: "out/container_creating.txt"
    shell: "echo never > {{output}}"

rule over_limit_range:
    output: "out/over_limit_range.txt"
    resources: mem_mb=12000, scale=0
    shell: "echo never > {{output}}"

rule misspelt_priority:
    output: "out/misspelt_priority.txt"
    resources: gpu=1, gpu_manufacturer="nvidia", gpu_class="misspelt"
    shell: "echo never > {{output}}"

rule webhook_refused:
    output: "out/webhook_refused.txt"
    resources: disk_mb=60000
    shell: "echo never > {{output}}"

rule job_refused:
    output: "out/job_refused.txt"
    shell: "echo never > {{output}}"

rule gated_gpu:
    output: "out/gated_gpu.txt"
    resources: gpu=1, gpu_manufacturer="nvidia", gpu_class="a100"
    shell: "echo never > {{output}}"

rule gated:
    output: "out/gated-{{name}}.txt"
    shell: "python gate.py {{config[gates]}}/{{wildcards.name}} {{output}}"

rule progress:
    output: "out/progress.txt"
    log: "logs/progress.log"
    shell: "python progress.py {{output}} 2> {{log}}"
'''
# A rule's script as nadir's are (nadir.core.jobs.run_job), failing with a traceback.
CRASH_SCRIPT = """
from nadir.core.jobs import run_job
from nadir.report import plot_loss_curve
run_job(snakemake, lambda: plot_loss_curve("missing.json", snakemake.output[0], "t"))
"""
# A job that logs progress to stderr as nadir's jobs do, switching on their copy to stdout.
PROGRESS_SCRIPT = """
import logging, sys, time
from nadir.core.log_tee import tee_stderr_if_asked
tee_stderr_if_asked()
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
for i in range(1, 31):
    logging.getLogger("nadir.train").info("iteration %d/30", i)
    time.sleep(0.3)
open(sys.argv[1], "w").write("trained\\n")
"""


# A job that waits until the test opens its gate (a file on this machine: the double's pods run
# here), so that it is running, or finished, exactly when the test wants.
GATE_SCRIPT = """
import pathlib, sys, time
gate = pathlib.Path(sys.argv[1])
print("waiting for", gate.name, flush=True)
while not gate.exists():
    time.sleep(0.2)
pathlib.Path(sys.argv[2]).write_text(gate.name + "\\n")
"""
# GPU classes for the failing run: a gated card, and a priority class with a typo.
POD_SETTINGS = """
gpu_classes:
  a100: {gpuResource: nvidia.com/a100}
  misspelt: {priorityClassName: opportunstic}
"""


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    """The tiny workflow in a git repository (Snakemake ships git-tracked files to pods)."""
    directory = tmp_path_factory.mktemp("k8s-failures") / "workflow"
    directory.mkdir()
    (directory / "Snakefile").write_text(textwrap.dedent(SNAKEFILE))
    (directory / "progress.py").write_text(PROGRESS_SCRIPT)
    (directory / "crash.py").write_text(CRASH_SCRIPT)
    (directory / "gate.py").write_text(GATE_SCRIPT)
    (directory / "pods.yaml").write_text(POD_SETTINGS)
    subprocess.run(["git", "init", "-q"], cwd=directory, check=True)
    subprocess.run(["git", "add", "-A"], cwd=directory, check=True)
    return directory


def snakemake_command(double: KubernetesDouble, s3, prefix: str, *args: str) -> tuple[list, dict]:
    # Unbuffered, and every thread's stack on SIGABRT: what a hung controller was doing.
    env = {**os.environ, **s3.env(), "KUBECONFIG": str(double.kubeconfig),
           "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "snakemake", "--executor", "kubernetes-pods",
           "--kubernetes-pods-namespace", double.namespace, "--jobs", "8",
           "--container-image", "registry.example.org/nadir:test",
           "--default-storage-provider", "s3",
           "--default-storage-prefix", f"s3://{BUCKET}/{prefix}",
           "--storage-s3-endpoint-url", s3.endpoint, "--seconds-between-status-checks", "1",
           "--kubernetes-pods-stuck-timeout", "3", "--retries", "0", *args]
    return cmd, env


def run(workflow: Path, double: KubernetesDouble, s3, prefix: str,
        *args: str) -> tuple[subprocess.CompletedProcess, float]:
    cmd, env = snakemake_command(double, s3, prefix, *args)
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=workflow, env=env, capture_output=True, text=True,
                          timeout=HARD_TIMEOUT_S)
    return proc, time.monotonic() - started


def new_double(tmp_path: Path, name: str, **options) -> KubernetesDouble:
    return KubernetesDouble(tmp_path / name, Path(sys.executable).parent, namespace="nadir-ci",
                            **options).start()


def pod_of_rule(double: KubernetesDouble, rule: str) -> Pod:
    pods = [p for p in double.all_pods() if p.labels.get("snakemake-rule") == rule]
    assert len(pods) == 1, f"{len(pods)} pods of rule {rule}"
    return pods[0]


def error_of(output: str, rule: str) -> str:
    """The controller's error block for `rule` (a pod's own, quoted in it, is indented)."""
    match = re.search(rf"^Error in rule {rule}:\n.*?^    external_jobid: .*?$", output,
                      re.M | re.S)
    assert match, f"no error of rule {rule} in:\n{output[-3000:]}"
    return match.group(0)


def stop_when_started(double: KubernetesDouble, stops: dict[str, str]) -> threading.Thread:
    """Stop each rule's pod with the given reason once its task has started (in a thread):
    "Preempted" as the scheduler does, the others as a node does."""
    def watch():
        pending = dict(stops)
        deadline = time.monotonic() + HARD_TIMEOUT_S
        while pending and time.monotonic() < deadline:
            for pod in double.all_pods():
                rule = pod.labels.get("snakemake-rule")
                if rule in pending and pod.log_path.exists() \
                        and "task started" in pod.log_path.read_text(errors="replace"):
                    reason = pending.pop(rule)
                    if reason == "Preempted":
                        double.preempt(pod.name)
                    else:
                        double.kill(pod.name, reason)
            time.sleep(0.2)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def follow_progress(double: KubernetesDouble, seen: list[str]) -> None:
    """Read the progress pod's log through the API while it runs, as `kubectl logs -f` does,
    and keep the iteration lines seen before it ended (in a thread)."""
    core = kubernetes.client.CoreV1Api(
        kubernetes.config.new_client_from_config(str(double.kubeconfig)))
    deadline = time.monotonic() + HARD_TIMEOUT_S
    while time.monotonic() < deadline and len(seen) < 2:
        for pod in double.all_pods():
            if pod.labels.get("snakemake-rule") == "progress" and pod.process is not None \
                    and pod.exit_code is None:
                try:
                    log = core.read_namespaced_pod_log(pod.name, double.namespace,
                                                       container="snakemake")
                except kubernetes.client.ApiException:
                    continue
                lines = re.findall(r"iteration \d+/30", log)
                if lines and pod.exit_code is None and lines[-1] not in seen:
                    seen.append(lines[-1])
        time.sleep(0.3)


FAILING = ("unschedulable", "over_quota", "oom", "evicted", "deadline", "crash", "fine",
           "progress", "preempted", "container_creating", "over_limit_range",
           "misspelt_priority", "webhook_refused", "gated_gpu", "job_refused")
LARGE_DISK = PodWebhook("storage.example.org", lambda pod: (
    "ephemeral storage above 50G needs a persistent volume"
    if quantity(pod["spec"]["containers"][0]["resources"]["requests"]
                .get("ephemeral-storage", "0")) > 50e9 else None))


class RefuseJobsOfRule:
    """A validating admission webhook on Jobs that denies the Jobs of one rule (as a cluster's
    policy denies a Job: the API answers 403 and no Job exists)."""

    def __init__(self, rule: str):
        self.rule = rule

    def check(self, manifest: dict) -> None:
        if manifest["metadata"]["labels"].get("snakemake-rule") == self.rule:
            raise ApiError(403, "Forbidden", 'admission webhook "jobs.example.org" denied the '
                                             "request: this namespace's Job budget is spent")


@pytest.fixture(scope="module")
def failing_run(workflow, s3, tmp_path_factory):
    """One run of every rule with --keep-going on a cluster of one CPU node in a namespace like
    a fresh Nautilus one (priority classes, a zero quota on gated GPUs), under a 16 GiB memory
    quota, a 10 GiB LimitRange maximum, a webhook on large disks, and a sandbox that cannot be
    made for one rule; oom, evicted, deadline and preempted pods are stopped once their task
    runs. A job waits 3 s in any state, a GPU job 4 s for a node or quota."""
    nautilus = nautilus_namespace()
    double = new_double(tmp_path_factory.mktemp("cluster"), "double",
                        nodes=[Node("cpu-node-1", {"kubernetes.io/hostname": "cpu-node-1"})],
                        quota={"requests.memory": "16Gi"}, quotas=nautilus["quotas"],
                        priority_classes=nautilus["priority_classes"],
                        limit_range={"memory": "10Gi"}, pod_webhooks=[LARGE_DISK],
                        policy=RefuseJobsOfRule("job_refused"),
                        stuck_creating={"snakemake-rule=container_creating": (
                            "FailedCreatePodSandBox", "Failed to create pod sandbox: rpc error: "
                            "code = DeadlineExceeded desc = context deadline exceeded")})
    stop_when_started(double, {"oom": "OOMKilled", "evicted": "Evicted",
                               "deadline": "DeadlineExceeded", "preempted": "Preempted"})
    progress: list[str] = []
    threading.Thread(target=follow_progress, args=(double, progress), daemon=True).start()
    proc, elapsed = run(workflow, double, s3, "failing", "--keep-going",
                        "--kubernetes-pods-pod-settings", "pods.yaml",
                        "--kubernetes-pods-gpu-queue-timeout", "4",
                        *(f"out/{name}.txt" for name in FAILING))
    yield double, proc, elapsed, progress
    double.stop()


def test_failing_run_ends_fast_and_the_good_job_succeeds(failing_run, s3):
    double, proc, elapsed, _ = failing_run
    assert proc.returncode != 0
    assert elapsed < FAST_S, proc.stderr[-3000:]
    stored = s3.client().get_object(Bucket=BUCKET, Key="failing/out/fine.txt")["Body"].read()
    assert stored == b"done\n"
    assert double.jobs == {}  # every Job deleted after it ended
    assert double.secrets == {}


@pytest.mark.parametrize(("rule", "reason", "detail"), [
    ("unschedulable", "Unschedulable", "0/1 nodes are available: 1 Insufficient nvidia.com/gpu"),
    ("oom", "OOMKilled", "exit code 137"),
    ("evicted", "Evicted", "The node was low on resource: ephemeral-storage"),
    ("deadline", "DeadlineExceeded", "Job was active longer than specified deadline"),
    ("crash", "Error", "exit code 1"),
    # scheduled, but its sandbox is never made: named with the kubelet's event
    ("container_creating", "ContainerCreating", "event FailedCreatePodSandBox: Failed to create "
                                                "pod sandbox: rpc error"),
])
def test_a_failed_pod_is_named_with_its_reason_and_detail(failing_run, rule, reason, detail):
    double, proc, _, _ = failing_run
    error = error_of(proc.stderr, rule)
    pod = pod_of_rule(double, rule)
    assert f"(pod {pod.name}) failed: {reason}: " in error
    assert detail in error


def test_a_preempted_pod_is_named_as_preempted_not_by_its_exit_code(failing_run):
    double, proc, _, _ = failing_run
    error = error_of(proc.stderr, "preempted")
    pod = pod_of_rule(double, "preempted")
    assert pod.exit_code == 143  # SIGTERM: all that upstream would have said
    assert f"(pod {pod.name}) failed: Preempted: " in error
    assert "exit code 143" not in error


def test_waiting_states_time_out_gpu_queue_waits_later(failing_run):
    """A GPU job may wait longer for a node (or quota) than any job waits in another state."""
    _, proc, _, _ = failing_run
    assert "waits: Unschedulable" in proc.stderr and "waits: ContainerCreating" in proc.stderr
    assert "for more than 4 s, --kubernetes-pods-gpu-queue-timeout" in error_of(proc.stderr,
                                                                              "unschedulable")
    assert "for more than 3 s, --kubernetes-pods-stuck-timeout" in error_of(proc.stderr,
                                                                          "container_creating")


@pytest.mark.parametrize(("rule", "refusal"), [
    ("over_quota", "exceeded quota: nadir-quota, requested: requests.memory=20000M"),
    # a fresh Nautilus namespace: a quota of zero for A100/H100/H200 until a request is granted
    ("gated_gpu", "exceeded quota: gpu-quota, requested: requests.nvidia.com/a100=1"),
    ("over_limit_range", "maximum memory usage per Container is 10Gi, but limit is 12000M"),
    ("misspelt_priority", "no PriorityClass with name opportunstic was found"),
    ("webhook_refused", 'admission webhook "storage.example.org" denied the request: ephemeral '
                        "storage above 50G needs a persistent volume"),
])
def test_a_pod_refused_at_creation_fails_at_once_with_the_reason(failing_run, rule, refusal):
    double, proc, _, _ = failing_run
    error = error_of(proc.stderr, rule)
    job = next(j for j in double.accepted("Job")
               if j["metadata"]["labels"]["snakemake-rule"] == rule)
    assert f"Kubernetes Job {job['metadata']['name']} (no pod) failed: FailedCreate: " in error
    assert refusal in error
    assert "timeout" not in error  # not waited for: waiting cannot make it fit


def test_a_job_refused_by_the_api_fails_that_job_and_the_run_goes_on(failing_run):
    """A Job the API server refuses (an admission webhook, a quota on Jobs) fails its job with
    the refusal; with --keep-going the others still run to their own ends (asserted above and
    below for every rule of this run)."""
    double, proc, _, _ = failing_run
    error = re.search(r"^Error in rule job_refused:\n.*?(?=^\S)", proc.stderr, re.M | re.S)
    assert error, proc.stderr[-3000:]
    assert "Kubernetes refused the Job of rule job_refused" in error.group(0)
    assert 'admission webhook "jobs.example.org" denied the request: this namespace\'s Job ' \
        "budget is spent" in error.group(0)
    assert not [j for j in double.accepted("Job")
                if j["metadata"]["labels"]["snakemake-rule"] == "job_refused"]


def test_a_crashed_job_shows_its_traceback_in_the_error(failing_run):
    _, proc, _, _ = failing_run
    error = error_of(proc.stderr, "crash")
    assert "End of the pod log (whole log: " in error
    assert "Traceback (most recent call last):" in error
    assert "FileNotFoundError: [Errno 2] No such file or directory: 'missing.json'" in error


def test_an_image_that_cannot_be_pulled_fails_the_job(workflow, s3, tmp_path):
    double = new_double(tmp_path, "double",
                        unpullable_images={"registry.example.org/nadir:test"})
    try:
        proc, elapsed = run(workflow, double, s3, "pull", "out/fine.txt")
        assert proc.returncode != 0 and elapsed < FAST_S
        error = error_of(proc.stderr, "fine")
        pod = pod_of_rule(double, "fine")
        assert f"(pod {pod.name}) failed: ErrImagePull: failed to pull" in error
        assert 'event Failed: Failed to pull image "registry.example.org/nadir:test"' in error
    finally:
        double.stop()


def test_a_missing_secret_fails_with_create_container_config_error(workflow, s3, tmp_path):
    double = new_double(tmp_path, "double")
    double.forget_secrets = True  # as if someone deleted the run's Secret at once
    try:
        proc, elapsed = run(workflow, double, s3, "secret", "out/fine.txt")
        assert proc.returncode != 0 and elapsed < FAST_S
        pod = pod_of_rule(double, "fine")
        assert f"(pod {pod.name}) failed: CreateContainerConfigError: " \
            in error_of(proc.stderr, "fine")
    finally:
        double.stop()


def test_transient_api_errors_are_retried_and_no_job_is_lost(workflow, s3, tmp_path):
    double = new_double(tmp_path, "double")
    jobs, status = r"/apis/batch/v1/namespaces/[^/]+/jobs$", r"/jobs/[^/]+/status$"
    double.inject_faults("POST", jobs, 429, "drop", 503)
    # an API server that takes a status read and never answers (urllib3 asks three more times)
    double.inject_faults("GET", status, 500, 502, "drop", *["hang"] * 4)
    double.inject_faults("GET", r"/api/v1/namespaces/[^/]+/pods$", 429)
    try:
        proc, _ = run(workflow, double, s3, "faults", "out/fine.txt",
                      "--kubernetes-pods-api-timeout", "1")
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "Kubernetes API: HTTP 429" in proc.stderr
        assert "Kubernetes API: HTTP 500" in proc.stderr
        assert "Read timed out. (read timeout=1)" in proc.stderr  # the hung call ended, retried
        assert [f.answers for f in double.faults] == [[], [], []]  # every fault was met
        [job] = double.accepted("Job")  # a retried creation made no second Job
        assert job["metadata"]["labels"]["snakemake-rule"] == "fine"
        assert double.jobs == {} and double.secrets == {}
    finally:
        double.stop()


def signal_set(pid: int, tid: int, field: str) -> set[int]:
    """A signal set of thread `tid` of process `pid` from /proc: SigBlk (blocked), SigPnd
    (pending for the thread), ShdPnd (pending for the process), SigIgn, SigCgt (caught)."""
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    mask = int(re.search(rf"^{field}:\s+([0-9a-f]+)$", status, re.M).group(1), 16)
    return {number for number in range(1, 65) if mask >> (number - 1) & 1}


def signal_report(pid: int) -> str:
    """Where SIGINT stands in each thread of `pid`: what a hung Ctrl-C is diagnosed from."""
    lines = []
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        sets = {field: signal.SIGINT in signal_set(pid, tid, field)
                for field in ("SigBlk", "SigPnd", "ShdPnd", "SigIgn", "SigCgt")}
        lines.append(f"thread {tid}{' (main)' if tid == pid else ''}: SIGINT {sets}")
    return "\n".join(lines)


def test_ctrl_c_deletes_the_runs_jobs_and_secret(workflow, s3, tmp_path):
    double = new_double(tmp_path, "double")
    cmd, env = snakemake_command(double, s3, "interrupt", "out/oom.txt", "out/evicted.txt")
    # As from a terminal: SIGINT handled. A shell without job control starts a background
    # command (`make test &`) with SIGINT ignored, every process it starts inherits that, and
    # Python keeps it: such suite runs left the controller deaf to Ctrl-C (SigIgn in /proc).
    as_from_a_terminal = [sys.executable, "-c", "import os, signal, sys; "
                          "signal.signal(signal.SIGINT, signal.SIG_DFL); "
                          "os.execv(sys.argv[1], sys.argv[1:])"]
    controller = subprocess.Popen([*as_from_a_terminal, *cmd], cwd=workflow, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        double.wait_for(lambda: sum("task started" in p.log_path.read_text(errors="replace")
                                    for p in double.all_pods() if p.log_path.exists()) == 2,
                        HARD_TIMEOUT_S, "both tasks to start")
        assert len(double.secrets) == 1 and len(double.jobs) == 2
        pid = controller.pid
        assert signal.SIGINT not in signal_set(pid, pid, "SigBlk") | signal_set(pid, pid, "SigIgn")
        controller.send_signal(signal.SIGINT)
        try:
            output, _ = controller.communicate(timeout=FAST_S)
        except subprocess.TimeoutExpired:
            signals = signal_report(pid)
            controller.send_signal(signal.SIGABRT)  # stacks, see snakemake_command
            output, _ = controller.communicate()
            raise AssertionError(f"Snakemake did not exit within {FAST_S} s of SIGINT.\n"
                                 f"{signals}\nIts output:\n{output[-8000:]}") from None
    finally:
        controller.kill()
        double.stop()
    assert "Terminating processes on user request" in output
    assert double.jobs == {} and double.secrets == {}
    assert all(pod.exit_code is not None for pod in double.all_pods())


def test_a_running_job_shows_its_progress_in_the_pod_log_and_keeps_its_log_file(failing_run, s3):
    _, _, _, progress = failing_run
    # two different iteration lines read while the pod was still running: the log streams
    assert len(progress) == 2, progress
    stored = s3.client().get_object(Bucket=BUCKET, Key="failing/logs/progress.log")["Body"]
    assert re.findall(r"iteration \d+/30", stored.read().decode()) == \
        [f"iteration {i}/30" for i in range(1, 31)]  # the rule's log file has every line


def test_a_role_without_a_right_the_executor_uses_fails_the_job_at_once(workflow, s3, tmp_path):
    """The first round's documented Role lacked `jobs/status`: every status read was a 403 and
    every job waited two hours as unreadable. A 403 now fails the job at once, naming it."""
    role = role_from_manifests(ROOT / "profiles" / "nautilus" / "controller.yaml", "nadir-ci")
    lacking = Role(tuple(r for r in role.rules if "jobs/status" not in r["resources"]), role.user)
    double = new_double(tmp_path, "double", role=lacking)
    try:
        proc, elapsed = run(workflow, double, s3, "rbac", "out/fine.txt")
        assert proc.returncode != 0 and elapsed < FAST_S
        error = error_of(proc.stderr, "fine")
        assert ('failed: Forbidden: HTTP 403 Forbidden: jobs.batch "snakejob-' in error)
        assert 'cannot get resource "jobs/status" in API group "batch"' in error
    finally:
        double.stop()


def test_a_controller_killed_and_started_again_adopts_its_jobs(workflow, s3, tmp_path):
    """SIGKILL of the controller while two jobs run; one finishes while it is down. Started
    again (after `--unlock`, as after any crash), it adopts the running Job, takes the finished
    one's output as it is, and finishes the run: no Job created twice, no output made twice."""
    checkout = tmp_path / "checkout"
    shutil.copytree(workflow, checkout)
    gates = tmp_path / "gates"
    gates.mkdir()
    double = new_double(tmp_path, "double")
    cmd, env = snakemake_command(double, s3, "restart", "out/gated-early.txt",
                                 "out/gated-late.txt", "--ignore-incomplete", "--config",
                                 f"gates={gates}")
    first = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        double.wait_for(lambda: sum("waiting for" in p.log_path.read_text()
                                    for p in double.all_pods() if p.log_path.exists()) == 2,
                        HARD_TIMEOUT_S, "both jobs to run")
        first.kill()  # SIGKILL: no cleanup, the Jobs and the Secret stay
        first.wait()
        (gates / "early").touch()
        early_pod = next(p for p in double.all_pods() if "name=early" in str(p.container))
        double.wait_for(lambda: early_pod.exit_code == 0, HARD_TIMEOUT_S, "the early job")
        key = "restart/out/gated-early.txt"
        made = s3.client().head_object(Bucket=BUCKET, Key=key)["LastModified"]
        subprocess.run([*cmd, "--unlock"], cwd=checkout, env=env, check=True,
                       capture_output=True, timeout=HARD_TIMEOUT_S)
        log = tmp_path / "second.log"
        with open(log, "w") as output:
            second = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=output,
                                      stderr=subprocess.STDOUT)
            # the late job still runs when it is adopted; then it may finish
            double.wait_for(lambda: "Adopting Kubernetes Job" in log.read_text(),
                            HARD_TIMEOUT_S, "the second controller to adopt a Job")
            (gates / "late").touch()
            second.wait(timeout=HARD_TIMEOUT_S)
    finally:
        first.kill()
        double.stop()
    output = log.read_text()
    assert second.returncode == 0, output[-4000:]
    [late_job] = [j["metadata"]["name"] for j in double.accepted("Job")
                  if "name=late" in str(j["spec"])]
    assert f"Adopting Kubernetes Job {late_job} of rule gated" in output
    assert len(double.accepted("Job")) == 2 and len(double.all_pods()) == 2
    assert s3.client().head_object(Bucket=BUCKET, Key=key)["LastModified"] == made
    stored = s3.client().get_object(Bucket=BUCKET, Key="restart/out/gated-late.txt")
    assert stored["Body"].read() == b"late\n"
    # the first controller's Secret too: nothing of the run is left behind
    assert double.jobs == {} and double.secrets == {}

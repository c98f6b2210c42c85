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
from k8s_double import KubernetesDouble, Node, Pod

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


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    """The tiny workflow in a git repository (Snakemake ships git-tracked files to pods)."""
    directory = tmp_path_factory.mktemp("k8s-failures") / "workflow"
    directory.mkdir()
    (directory / "Snakefile").write_text(textwrap.dedent(SNAKEFILE))
    (directory / "progress.py").write_text(PROGRESS_SCRIPT)
    (directory / "crash.py").write_text(CRASH_SCRIPT)
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
    """Stop each rule's pod with the given reason once its task has started (in a thread)."""
    def watch():
        pending = dict(stops)
        deadline = time.monotonic() + HARD_TIMEOUT_S
        while pending and time.monotonic() < deadline:
            for pod in double.all_pods():
                rule = pod.labels.get("snakemake-rule")
                if rule in pending and pod.log_path.exists() \
                        and "task started" in pod.log_path.read_text(errors="replace"):
                    double.kill(pod.name, pending.pop(rule))
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


@pytest.fixture(scope="module")
def failing_run(workflow, s3, tmp_path_factory):
    """One run of every rule with --keep-going on a cluster of one CPU node under a 16 GiB
    memory quota; oom, evicted and deadline pods are stopped once their task runs."""
    double = new_double(tmp_path_factory.mktemp("cluster"), "double",
                        nodes=[Node("cpu-node-1", {"kubernetes.io/hostname": "cpu-node-1"})],
                        quota={"requests.memory": "16Gi"})
    stop_when_started(double, {"oom": "OOMKilled", "evicted": "Evicted",
                               "deadline": "DeadlineExceeded"})
    progress: list[str] = []
    threading.Thread(target=follow_progress, args=(double, progress), daemon=True).start()
    proc, elapsed = run(workflow, double, s3, "failing", "--keep-going",
                        *(f"out/{name}.txt" for name in ("unschedulable", "over_quota", "oom",
                                                         "evicted", "deadline", "crash", "fine",
                                                         "progress")))
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
])
def test_a_failed_pod_is_named_with_its_reason_and_detail(failing_run, rule, reason, detail):
    double, proc, _, _ = failing_run
    error = error_of(proc.stderr, rule)
    pod = pod_of_rule(double, rule)
    assert f"(pod {pod.name}) failed: {reason}: " in error
    assert detail in error


def test_unschedulable_waits_for_the_stuck_timeout_then_fails(failing_run):
    _, proc, _, _ = failing_run
    assert "waits: Unschedulable" in proc.stderr
    assert "for more than 3 s, --kubernetes-pods-stuck-timeout" in error_of(proc.stderr,
                                                                          "unschedulable")


def test_quota_that_can_never_admit_the_pod_fails_at_once(failing_run):
    double, proc, _, _ = failing_run
    error = error_of(proc.stderr, "over_quota")
    job = next(j for j in double.accepted("Job")
               if j["metadata"]["labels"]["snakemake-rule"] == "over_quota")
    assert f"Kubernetes Job {job['metadata']['name']} (no pod) failed: FailedCreate: " in error
    assert "exceeded quota: nadir-quota, requested: requests.memory=20000M" in error
    assert "stuck-timeout" not in error  # not waited for: it can never fit


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
    double.inject_faults("GET", status, 500, 502, "drop")
    double.inject_faults("GET", r"/api/v1/namespaces/[^/]+/pods$", 429)
    try:
        proc, _ = run(workflow, double, s3, "faults", "out/fine.txt")
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "Kubernetes API: HTTP 429" in proc.stderr
        assert "Kubernetes API: HTTP 500" in proc.stderr
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

"""Snakemake executor `kubernetes-pods`: the upstream Kubernetes executor plus nadir's pod settings.

Every Job is built by snakemake-executor-plugin-kubernetes (0.5.1) exactly as with
`--executor kubernetes`; this plugin amends the finished manifest just before it is sent
(`pod_settings.apply_pod_settings`: /dev/shm, GPU resource name and class, node selector,
affinity, tolerations, priority class, image pull secrets, labels, a deadline, a CPU image and no
GPU for pods without one) and replaces how jobs are watched and stopped, where upstream hangs or
fails silently:

- a job whose pod cannot start fails with the pod, the reason and the event text
  (`pod_status`): image pull errors, a missing Secret, OOMKilled, an eviction or preemption, the
  deadline, a pod that admission refuses (a quota it can never fit, a LimitRange maximum, an
  unknown PriorityClass, a webhook); every waiting state (a node, quota, the container being
  created) once it has lasted `--kubernetes-pods-stuck-timeout` seconds
  (`--kubernetes-pods-gpu-queue-timeout` for a GPU job waiting for a node or quota). Upstream
  counts all of them as running until the deadline;
- the last lines of a failed pod's log (nadir copies its log there, with any traceback) are in
  the error message, and the whole log is kept in .snakemake/auxiliary/kubernetes-logs/;
- every API call has a timeout, and so has a credential refresh (an OIDC login that waits for a
  browser): none can hold the executor's lock forever. Answers 429 and 5xx and dropped
  connections are retried with back-off; a job whose status cannot be read stays active
  (upstream drops it unreported) until the stuck timeout; a 403 fails it at once, naming the
  right the controller lacks;
- a controller started again on the same namespace and storage prefix (after a crash, or at the
  deadline of a controller Job) adopts the Jobs the earlier one left, found by their run and job
  labels, instead of starting them again;
- stopping the controller (Ctrl-C, an error) deletes every Job of the run, found by its
  `snakemake-run` label, and the run's Secrets, even when one of those calls fails;
- pods do not `pip install` the S3 storage plugin at start: the nadir image ships it pinned;
- pods may reach S3 at another endpoint than the controller (inside and outside a cluster);
- a failed pod's log is read from its (only) container, not with `previous=True`, which a real
  API server refuses for a container that never restarted (Jobs run with restartPolicy Never).

Settings: those of the upstream plugin under the `--kubernetes-pods-` prefix, plus the ones of
`ExecutorSettings` below (docs/kubernetes.md).
"""

import dataclasses
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, AsyncGenerator, Callable, List, Optional  # noqa: UP035

import kubernetes.client
import kubernetes.config
import snakemake_executor_plugin_kubernetes as upstream
import urllib3
from kubernetes.client.rest import ApiException
from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface

from nadir.core.errors import NadirError
from nadir.storage.preflight import defer_problems, placeholder_problems, settings_message
from snakemake_executor_plugin_kubernetes_pods.pod_settings import (
    COMMAND_ANNOTATION,
    CONTAINER_NAME,
    JOB_LABEL,
    RUN_LABEL,
    ClusterPodSettings,
    apply_pod_settings,
    command_fingerprint,
    load_pod_settings,
)
from snakemake_executor_plugin_kubernetes_pods.pod_status import (
    Failed,
    Stuck,
    assess,
    disrupted_pod,
    log_tail,
)

# API answers worth another try: too many requests, and the server or a proxy failing.
RETRIED_STATUSES = {429, 500, 502, 503, 504}
API_ATTEMPTS = 6  # back-off 1, 2, 4, 8, 16 s: about half a minute of outage is ridden out
MAX_BACKOFF_S = 30.0


class CredentialTimeout(Exception):
    """Getting or refreshing the kubeconfig's credentials did not finish in time."""


def _model_of(job: JobExecutorInterface) -> str | None:
    """A job's `model` wildcard; for a group job (profile `groups:`), the one its jobs share."""
    if job.is_group():
        models = {(member.wildcards_dict or {}).get("model") for member in job.jobs}
        return models.pop() if len(models) == 1 else None
    return (job.wildcards_dict or {}).get("model")


def job_key(job: JobExecutorInterface) -> str:
    """Which job this is, the same in every controller of a run: a hash of its outputs."""
    outputs = "\n".join(sorted(str(path) for path in job.output))
    return hashlib.sha256(f"{job.name}\n{outputs}".encode()).hexdigest()[:40]


def run_id(namespace: str, storage_prefix: str | None) -> str:
    """The run's id (its `snakemake-run` label): the same for every controller of one storage
    prefix in one namespace, so that a controller started again finds the Jobs of the earlier."""
    digest = hashlib.sha256(f"{namespace}\n{storage_prefix or ''}".encode()).hexdigest()
    return f"run-{digest[:20]}"


@dataclass
class ExecutorSettings(upstream.ExecutorSettings):
    # Optional[...], not `| None`: Snakemake derives the CLI argument's type from it.
    pod_settings: Optional[str] = field(  # noqa: UP045
        default=None,
        metadata={"help": "YAML file with labels, nodeSelector, affinity, tolerations, "
                          "priorityClassName, imagePullSecrets and GPU resource names for every "
                          "pod (`all`), pods without a GPU (`cpu`), GPU pods (`gpu`), GPU classes "
                          "(`gpu_classes`) and the models that need one (`models`); see "
                          "docs/kubernetes.md."},
    )
    stuck_timeout: int = field(
        default=1800,
        metadata={"help": "Seconds a job may wait in one state before it fails with the reason: "
                          "for a node (Unschedulable) or quota (FailedCreate), its container "
                          "being created (ContainerCreating: volumes, sandbox, image pull), a "
                          "pod not yet created or scheduled, a status the API would not give."},
    )
    gpu_queue_timeout: Optional[int] = field(  # noqa: UP045
        default=None,
        metadata={"help": "Seconds a job that requests a GPU may wait for a node or for quota "
                          "(default: --kubernetes-pods-stuck-timeout); a busy cluster's GPUs "
                          "take longer to come free than its CPUs."},
    )
    log_lines: int = field(
        default=40,
        metadata={"help": "Lines of a failed pod's log quoted in the error message."},
    )
    s3_endpoint_in_pods: Optional[str] = field(  # noqa: UP045
        default=None,
        metadata={"help": "S3 endpoint URL for pods when it differs from the controller's "
                          "--storage-s3-endpoint-url (a cluster's in-cluster endpoint, e.g. "
                          "http://rook-ceph-rgw-nautiluss3.rook on NRP Nautilus' west pool)."},
    )
    cpu_image: Optional[str] = field(  # noqa: UP045
        default=None,
        metadata={"help": "Container image for jobs that request no GPU (default: "
                          "--container-image): the CPU target of containers/Dockerfile, without "
                          "CUDA's libraries."},
    )
    api_timeout: int = field(
        default=60,
        metadata={"help": "Seconds any one Kubernetes API call, or a refresh of the kubeconfig's "
                          "credentials, may take before it counts as failed."},
    )

    def placeholders(self) -> list[str]:
        """Options still holding a profile's placeholder, one line each."""
        return placeholder_problems({
            "kubernetes-pods-namespace": self.namespace,
            "kubernetes-pods-cpu-image": self.cpu_image,
            "kubernetes-pods-s3-endpoint-in-pods": self.s3_endpoint_in_pods})

    def __post_init__(self) -> None:
        """Snakemake reads these options (in dry runs too) before the workflow, whose check at
        the controller's start names the placeholders with any storage problem, in one message."""
        defer_problems(self.placeholders())


common_settings = dataclasses.replace(upstream.common_settings,
                                      auto_deploy_default_storage_provider=False)


class _Bounded:
    """`call` run in a thread of its own, waited for at most `timeout_s`.

    For the kubeconfig's credentials: an exec plugin (kubelogin, for OIDC) that waits for a
    browser login, or an issuer that does not answer, must not hold the executor's lock, and
    every API call behind it, forever. While one run is unfinished, later calls wait for that one
    (within the same bound) instead of starting another.
    """

    def __init__(self, call: Callable[..., Any], timeout_s: float, what: str) -> None:
        self.call, self.timeout_s, self.what = call, timeout_s, what
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._outcome: dict[str, Any] = {}

    def __call__(self, *args: Any) -> Any:
        with self._guard:
            if self._thread is None or not self._thread.is_alive():
                self._outcome = {}
                self._thread = threading.Thread(target=self._run, args=(self._outcome, args),
                                                daemon=True)
                self._thread.start()
            thread, outcome = self._thread, self._outcome
        thread.join(self.timeout_s)
        if thread.is_alive():
            raise CredentialTimeout(
                f"{self.what} did not finish within {self.timeout_s:g} s (an OIDC login that "
                f"waits for a browser?): log in again, or give the controller a ServiceAccount "
                f"kubeconfig for long runs (docs/kubernetes.md)")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("result")

    def _run(self, outcome: dict[str, Any], args: tuple) -> None:
        try:
            outcome["result"] = self.call(*args)
        except Exception as error:  # handed to the caller
            outcome["error"] = error


class _BoundedApiClient(kubernetes.client.ApiClient):
    """ApiClient whose every request has a timeout and whose credential refresh is `_Bounded`."""

    def __init__(self, configuration: kubernetes.client.Configuration, timeout_s: float) -> None:
        hook = configuration.refresh_api_key_hook
        if hook is not None and not isinstance(hook, _Bounded):
            configuration.refresh_api_key_hook = _Bounded(hook, timeout_s,
                                                          "Refreshing the kubeconfig's token")
        super().__init__(configuration)
        self.timeout_s = timeout_s

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("_request_timeout") is None:  # (connect, read): a float alone is ignored
            kwargs["_request_timeout"] = (self.timeout_s, self.timeout_s)
        return super().call_api(*args, **kwargs)


class _AmendingBatchApi(kubernetes.client.BatchV1Api):
    """BatchV1Api whose Job creation passes the manifest through `amend` first.

    A creation retried after a dropped connection may find its Job already made (the name is
    derived from the controller's run namespace, job and attempt, so a 409 can only be this
    job's): that Job is returned.
    """

    def __init__(self, api_client: kubernetes.client.ApiClient, amend) -> None:
        super().__init__(api_client)
        self._amend = amend

    def create_namespaced_job(self, namespace: str, body: Any, **kwargs: Any) -> Any:
        manifest = self._amend(body)
        try:
            return super().create_namespaced_job(namespace, manifest, **kwargs)
        except ApiException as error:
            if error.status != 409:
                raise
            return self.read_namespaced_job(manifest["metadata"]["name"], namespace)


class _RunCoreApi(kubernetes.client.CoreV1Api):
    """CoreV1Api that reads the log of the pod's current container, never `previous`, and
    labels the run's Secret with the run (a later controller, or kubectl, finds it by label)."""

    def __init__(self, api_client: kubernetes.client.ApiClient, labels: dict[str, str]) -> None:
        super().__init__(api_client)
        self._labels = labels

    def read_namespaced_pod_log(self, name: str, namespace: str, **kwargs: Any) -> Any:
        kwargs["previous"] = False
        return super().read_namespaced_pod_log(name, namespace, **kwargs)

    def create_namespaced_secret(self, namespace: str, body: Any, **kwargs: Any) -> Any:
        body.metadata.labels = {**(body.metadata.labels or {}), **self._labels}
        return super().create_namespaced_secret(namespace, body, **kwargs)


# What an API call may fail with: an answer, a connection, or the credentials.
API_ERRORS = (ApiException, urllib3.exceptions.HTTPError, ConnectionError, CredentialTimeout)


class Executor(upstream.Executor):
    def __post_init__(self) -> None:
        settings = self.workflow.executor_settings
        # Before anything is made in the cluster (also for a workflow without nadir's check).
        problems = settings.placeholders() + placeholder_problems(
            {"container-image": self.workflow.remote_execution_settings.container_image})
        if problems:
            raise WorkflowError(settings_message(problems))
        path = settings.pod_settings
        try:
            self.pod_settings = load_pod_settings(path) if path else ClusterPodSettings()
        except NadirError as error:
            raise WorkflowError(str(error)) from None
        self.run_id = run_id(settings.namespace,
                             self.workflow.storage_settings.default_storage_prefix)
        self._job_in_submission: JobExecutorInterface | None = None
        # Job -> (what it waits for, since when, whether that was said)
        self._waiting: dict[str, tuple[str, float, bool]] = {}
        self._unreadable_since: dict[str, float] = {}
        self._cleaned_up = False
        super().__post_init__()
        self._left_jobs = self._jobs_left_by_earlier_controllers()
        self.logger.info(f"Kubernetes run {self.run_id}: kubectl -n {self.namespace} get "
                         f"pods -l {RUN_LABEL}={self.run_id}"
                         + (f" (pod settings from {path})" if path else ""))

    # The upstream executor assigns both clients in __post_init__ and again after it
    # re-authenticates; these setters wrap whatever it assigns.
    @property
    def batchapi(self) -> kubernetes.client.BatchV1Api:
        return self._batchapi

    @batchapi.setter
    def batchapi(self, api: kubernetes.client.BatchV1Api) -> None:
        self._batchapi = _AmendingBatchApi(self._bounded_client(api), self._amend_job)

    @property
    def kubeapi(self) -> kubernetes.client.CoreV1Api:
        return self._kubeapi

    @kubeapi.setter
    def kubeapi(self, api: kubernetes.client.CoreV1Api) -> None:
        self._kubeapi = _RunCoreApi(self._bounded_client(api), {RUN_LABEL: self.run_id})

    def _bounded_client(self, api: Any) -> _BoundedApiClient:
        return _BoundedApiClient(api.api_client.configuration,
                                 self.workflow.executor_settings.api_timeout)

    # --- API calls ---------------------------------------------------------------------
    def _with_retries(self, call: Callable[[], Any]) -> Any:
        """`call()`, retried with back-off on 429/5xx and dropped connections; 401 makes the
        kubeconfig be read again; other API errors are raised as they are, and so is a
        credential refresh that does not finish (asking again would wait again)."""
        delay = 1.0
        for attempt in range(1, API_ATTEMPTS + 1):
            try:
                with self.lock:
                    return call()
            except ApiException as error:
                if error.status == 401:
                    return self._reauthenticate_and_retry(call)
                if error.status not in RETRIED_STATUSES or attempt == API_ATTEMPTS:
                    raise
                why = f"HTTP {error.status} {error.reason}"
                retry_after = (error.headers or {}).get("Retry-After", "")
                if retry_after.isdigit():
                    delay = min(float(retry_after), MAX_BACKOFF_S)
            except (urllib3.exceptions.HTTPError, ConnectionError) as error:
                if attempt == API_ATTEMPTS:
                    raise
                why = f"{type(error).__name__}: {error}"
            self.logger.warning(f"Kubernetes API: {why}; retrying in {delay:.0f} s "
                                f"(attempt {attempt} of {API_ATTEMPTS})")
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
        raise AssertionError("unreachable")

    def _reauthenticate_and_retry(self, func: Callable[[], Any] | None = None) -> Any:
        """Read the kubeconfig again (its token may have expired), within the API timeout, and
        make `func`'s call again. Upstream also runs `kubectl get nodes`, without a bound."""
        self.logger.info("Kubernetes API: 401 Unauthorized; reading the kubeconfig again")
        _Bounded(_load_config, self.workflow.executor_settings.api_timeout,
                 "Reading the kubeconfig's credentials")()
        self.kubeapi = kubernetes.client.CoreV1Api()
        self.batchapi = kubernetes.client.BatchV1Api()
        if func is None:
            return None
        with self.lock:
            return func()

    def _kubernetes_retry(self, func: Callable[[], Any]) -> Any:
        """Upstream's entry point for API calls, with nadir's retries."""
        try:
            return self._with_retries(func)
        except API_ERRORS as error:
            raise WorkflowError(f"Kubernetes request failed: {_api_error_text(error)}") from error

    # --- submission and adoption ---------------------------------------------------------
    def _jobs_left_by_earlier_controllers(self) -> dict[str, list[dict]]:
        """Jobs of this run that exist before this controller made any: an earlier controller
        of the run (crashed, or stopped at its deadline) started them. By job key."""
        try:
            listed = self._with_retries(lambda: self.batchapi.list_namespaced_job(
                self.namespace, label_selector=f"{RUN_LABEL}={self.run_id}"))
        except API_ERRORS as error:
            self.logger.warning(f"Could not list Jobs an earlier controller of this run may "
                                f"have left ({_api_error_text(error)}): none is adopted")
            return {}
        left: dict[str, list[dict]] = {}
        serialize = self._batchapi.api_client.sanitize_for_serialization
        for item in listed.items:
            manifest = serialize(item)
            key = (manifest["metadata"].get("labels") or {}).get(JOB_LABEL)
            left.setdefault(key or "", []).append(manifest)
        if left:
            names = sorted(m["metadata"]["name"] for ms in left.values() for m in ms)
            self.logger.info(f"{len(names)} Job(s) of this run left by an earlier controller: "
                             f"each is adopted when its job is due (not started again), the "
                             f"others are deleted at the end: {', '.join(names)}")
        return left

    @cached_property
    def _sources_digest(self) -> str:
        """A hash of the contents of the sources Snakemake ships to pods (not of their times)."""
        digest = hashlib.sha256()
        for path in sorted(self.workflow.dag.get_sources()):
            digest.update(path.encode() + b"\0")
            with open(path, "rb") as source:
                digest.update(hashlib.file_digest(source, "sha256").digest())
        return digest.hexdigest()

    def _adopt(self, job: JobExecutorInterface) -> bool:
        """Take over a Job an earlier controller left for this job, if one still runs (or has
        succeeded) the same command; delete the others. True when one was adopted."""
        left = self._left_jobs.pop(job_key(job), [])
        if not left:
            return False
        fingerprint = command_fingerprint(self.format_job_exec(job), self._sources_digest)
        adopted = None
        for manifest in left:
            name = manifest["metadata"]["name"]
            same = (manifest["metadata"].get("annotations") or {}).get(COMMAND_ANNOTATION) \
                == fingerprint
            failed = bool((manifest.get("status") or {}).get("failed"))
            if adopted is None and same and not failed:
                adopted = name
                continue
            why = "it failed" if failed else "its command differs (code, config or settings)"
            self.logger.info(f"Deleting Job {name} of rule {job.name} left by an earlier "
                             f"controller: {why}")
            self._delete_job(name)
        if adopted is None:
            return False
        self.logger.info(f"Adopting Kubernetes Job {adopted} of rule {job.name}, left by an "
                         f"earlier controller of this run: waiting for it, not starting it again")
        self.report_job_submission(SubmittedJobInfo(job=job, external_jobid=adopted))
        return True

    def run_job(self, job: JobExecutorInterface) -> None:
        if self._adopt(job):
            return
        self._job_in_submission = job
        try:
            super().run_job(job)
        except WorkflowError as error:
            # This job fails, as a failed pod would: the run goes on with --keep-going, and
            # Snakemake's --retries apply (a quota may have room again by then).
            self.report_job_error(SubmittedJobInfo(job=job), msg=(
                f"Kubernetes refused the Job of rule {job.name} (jobid {job.jobid}): {error}"))
        finally:
            self._job_in_submission = None

    def _amend_job(self, body: Any) -> dict[str, Any]:
        job = self._job_in_submission
        if job is None:
            raise WorkflowError("bug: a Job was created outside run_job")
        manifest = self._batchapi.api_client.sanitize_for_serialization(body)
        resources = dict(job.resources)
        runtime_min = resources.get("runtime")
        requests_gpu = bool(resources.get("gpu"))
        gpu_class = self.pod_settings.gpu_class(resources.get("gpu_class"), _model_of(job))
        try:
            settings = self.pod_settings.for_job(requests_gpu=requests_gpu, gpu_class=gpu_class)
        except KeyError as error:
            raise WorkflowError(f"rule {job.name}: {error.args[0]}") from None
        executor_settings = self.workflow.executor_settings
        amended = apply_pod_settings(
            manifest, settings, rule=job.name, run_id=self.run_id, job_key=job_key(job),
            fingerprint=command_fingerprint(manifest["spec"]["template"]["spec"]["containers"][0]
                                            ["args"][-1], self._sources_digest),
            requests_gpu=requests_gpu, image=executor_settings.cpu_image,
            shm_mb=resources.get("shm_mb"),
            deadline_s=int(runtime_min * 60) if runtime_min else None,
            s3_endpoint=executor_settings.s3_endpoint_in_pods,
        )
        self.logger.debug(f"Job {amended['metadata']['name']} of rule {job.name} with pod "
                          f"settings applied: {amended['spec']['template']['spec']}")
        return amended

    # --- watching ----------------------------------------------------------------------
    async def check_active_jobs(
        self, active_jobs: List[SubmittedJobInfo]  # noqa: UP006
    ) -> AsyncGenerator[SubmittedJobInfo, None]:
        for job_info in active_jobs:
            async with self.status_rate_limiter:
                if self._check(job_info):
                    yield job_info

    def _check(self, job_info: SubmittedJobInfo) -> bool:
        """Report a finished or failed job; True while it is still active."""
        name = job_info.external_jobid
        try:
            job, pod, events = self._observe(name)
        except ApiException as error:
            if error.status == 404:
                self._fail(job_info, Failed("NotFound", f"the Job {name} no longer exists "
                                                        f"(deleted outside Snakemake?)"))
                return False
            if error.status == 403:
                self._fail(job_info, Failed("Forbidden", f"{_api_error_text(error)}: the "
                                                         f"controller's rights (its Role, "
                                                         f"docs/kubernetes.md) must allow this"))
                return False
            return self._unreadable(job_info, error)
        except API_ERRORS as error:
            return self._unreadable(job_info, error)
        self._unreadable_since.pop(name, None)
        if _succeeded(job, pod):
            self.logger.info(f"Job {name} succeeded.")
            self.report_job_success(job_info)
            self._delete_job(name)
            return False
        verdict = assess(job, pod, events)
        if isinstance(verdict, Stuck):
            timeout, option = self._wait_limit(job_info, verdict)
            waiting = self._waiting.get(name)
            if waiting is None or waiting[0] != verdict.reason:
                waiting = self._waiting[name] = (verdict.reason, time.monotonic(), False)
            waited = time.monotonic() - waiting[1]
            # A wait in the queue is news at once; every pod passes through ContainerCreating
            # (and Pending) for a moment, which is news only once it lasts.
            if not waiting[2] and (verdict.queued or waited >= min(60.0, timeout / 2)):
                self._waiting[name] = (*waiting[:2], True)
                self.logger.info(f"{verdict.describe(name).replace(' failed:', ' waits:')} "
                                 f"(it fails after {timeout} s: {option})")
            if waited < timeout:
                return True
            verdict = Failed(verdict.reason, f"{verdict.detail} (for more than {timeout} s, "
                                             f"{option})", verdict.pod)
        self._waiting.pop(name, None)
        if verdict is None:
            return True
        self._fail(job_info, verdict, pod_running=pod is not None and _container_ran(pod))
        return False

    def _wait_limit(self, job_info: SubmittedJobInfo, verdict: Stuck) -> tuple[int, str]:
        """How long a job may wait in the state `verdict` names, and the option that says so."""
        settings = self.workflow.executor_settings
        if verdict.queued and job_info.job.resources.get("gpu") \
                and settings.gpu_queue_timeout is not None:
            return settings.gpu_queue_timeout, "--kubernetes-pods-gpu-queue-timeout"
        return settings.stuck_timeout, "--kubernetes-pods-stuck-timeout"

    def _observe(self, name: str) -> tuple[dict, dict | None, list[dict]]:
        """The Job, its newest pod and, when something is wrong, the events of both (and of a
        pod the Job says was disrupted) (JSON)."""
        serialize = self._batchapi.api_client.sanitize_for_serialization
        job = serialize(self._with_retries(
            lambda: self.batchapi.read_namespaced_job_status(name, self.namespace)))
        pods = self._with_retries(lambda: self.kubeapi.list_namespaced_pod(
            namespace=self.namespace, label_selector=f"job-name={name}")).items
        pod = serialize(max(pods, key=lambda p: str(p.metadata.creation_timestamp or ""))) \
            if pods else None
        phase = (pod or {}).get("status", {}).get("phase")
        events: list[dict] = []
        if phase not in ("Running", "Succeeded"):
            involved = {name, (pod or {}).get("metadata", {}).get("name"), disrupted_pod(job)}
            for involved_name in sorted(filter(None, involved)):
                listed = self._with_retries(lambda n=involved_name: self.kubeapi
                                            .list_namespaced_event(
                                                self.namespace,
                                                field_selector=f"involvedObject.name={n}"))
                events += [serialize(e) for e in listed.items]
        return job, pod, events

    def _unreadable(self, job_info: SubmittedJobInfo, error: Exception) -> bool:
        """Keep a job whose status the API would not give, until the stuck timeout."""
        name = job_info.external_jobid
        since = self._unreadable_since.setdefault(name, time.monotonic())
        timeout = self.workflow.executor_settings.stuck_timeout
        if time.monotonic() - since < timeout:
            self.logger.warning(f"Could not read the status of Kubernetes Job {name} "
                                f"({_api_error_text(error)}); asking again later.")
            return True
        self._fail(job_info, Failed("ApiUnavailable", f"its status could not be read for "
                                                      f"{timeout} s: {_api_error_text(error)}"))
        return False

    def _fail(self, job_info: SubmittedJobInfo, verdict: Failed,
              pod_running: bool = False) -> None:
        name = job_info.external_jobid
        message = f"{verdict.describe(name)} (rule {job_info.job.name})"
        aux_logs = []
        if verdict.pod and pod_running:
            kept = self.log_path / f"{name}.log"
            try:
                log = self._with_retries(lambda: self.kubeapi.read_namespaced_pod_log(
                    name=verdict.pod, namespace=self.namespace, container=CONTAINER_NAME))
            except API_ERRORS as error:
                message += f"\nIts log could not be read: {_api_error_text(error)}"
            else:
                kept.write_text(log)
                aux_logs.append(str(kept))
                lines = self.workflow.executor_settings.log_lines
                message += (f"\nEnd of the pod log (whole log: {kept}):\n"
                            f"{log_tail(log, lines)}")
        self.logger.error(message)
        self.report_job_error(job_info, msg=message + "\n", aux_logs=aux_logs)
        self._delete_job(name)

    def _delete_job(self, name: str) -> None:
        if self.workflow.executor_settings.omit_job_cleanup:
            return
        try:
            self._kubernetes_retry(lambda: self.safe_delete_job(name, ignore_not_found=True))
        except WorkflowError as error:
            self.logger.warning(f"Could not delete Job {name}: {error}; delete it with "
                                f"kubectl -n {self.namespace} delete job {name}")

    # --- stopping ----------------------------------------------------------------------
    def cancel_jobs(self, active_jobs: List[SubmittedJobInfo]) -> None:  # noqa: UP006
        """Delete the given Jobs and every other Job of this run (found by its run label:
        jobs being checked at that moment are not in `active_jobs`)."""
        names = {j.external_jobid for j in active_jobs}
        selector = f"{RUN_LABEL}={self.run_id}"
        try:
            listed = self._with_retries(lambda: self.batchapi.list_namespaced_job(
                self.namespace, label_selector=selector))
            names |= {item.metadata.name for item in listed.items}
        except API_ERRORS as error:
            self.logger.warning(f"Could not list this run's Jobs ({_api_error_text(error)}); "
                                f"check with kubectl -n {self.namespace} get jobs -l {selector}")
        for name in sorted(names):
            self.logger.info(f"Deleting Kubernetes Job {name}")
            self._delete_job(name)
        self._left_jobs = {}

    def shutdown(self) -> None:
        """Delete the Jobs earlier controllers left that this run did not need, and the run's
        Secrets (this controller's and any an earlier one left), once, whatever fails; then stop
        watching jobs."""
        try:
            if not self._cleaned_up:
                self._cleaned_up = True
                for manifests in self._left_jobs.values():
                    for manifest in manifests:
                        self._delete_job(manifest["metadata"]["name"])
                self._delete_secrets()
        finally:
            RemoteExecutor.shutdown(self)

    def _delete_secrets(self) -> None:
        names = {self.run_namespace}
        selector = f"{RUN_LABEL}={self.run_id}"
        try:
            listed = self._with_retries(lambda: self.kubeapi.list_namespaced_secret(
                self.namespace, label_selector=selector))
            names |= {item.metadata.name for item in listed.items}
        except API_ERRORS as error:
            self.logger.warning(f"Could not list this run's Secrets ({_api_error_text(error)})")
        for name in sorted(names):
            try:
                self._with_retries(lambda n=name: self.kubeapi.delete_namespaced_secret(
                    n, self.namespace))
            except ApiException as error:
                if error.status != 404:
                    self._secret_left(error, selector)
            except API_ERRORS as error:
                self._secret_left(error, selector)

    def _secret_left(self, error: Exception, selector: str) -> None:
        self.logger.error(f"Could not delete this run's Secret ({_api_error_text(error)}): "
                          f"kubectl -n {self.namespace} delete secrets -l {selector}")


def _load_config() -> None:
    """The kubeconfig, or inside a cluster the pod's ServiceAccount, as upstream loads them."""
    try:
        kubernetes.config.load_kube_config()
    except kubernetes.config.config_exception.ConfigException:
        kubernetes.config.load_incluster_config()


def _succeeded(job: dict, pod: dict | None) -> bool:
    if (job.get("status") or {}).get("succeeded"):
        return True
    terminated = _container_state(pod).get("terminated") or {}
    return terminated.get("exitCode") == 0


def _container_state(pod: dict | None) -> dict:
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER_NAME:
            return status.get("state") or {}
    return {}


def _container_ran(pod: dict) -> bool:
    """True when the container started, so that it has a log to read."""
    state = _container_state(pod)
    return bool(state.get("running") or state.get("terminated"))


def _api_error_text(error: Exception) -> str:
    """An API error as a line: the status and the API server's message (from its Status)."""
    if isinstance(error, ApiException):
        try:
            message = json.loads(error.body)["message"]
        except (TypeError, ValueError, KeyError):
            message = error.body or ""
        return f"HTTP {error.status} {error.reason}: {message}".strip()
    return f"{type(error).__name__}: {error}"

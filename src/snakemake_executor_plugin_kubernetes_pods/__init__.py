"""Snakemake executor `kubernetes-pods`: the upstream Kubernetes executor plus nadir's pod settings.

Every Job is built by snakemake-executor-plugin-kubernetes (0.5.1) exactly as with
`--executor kubernetes`; this plugin amends the finished manifest just before it is sent
(`pod_settings.apply_pod_settings`: /dev/shm, GPU resource name and class, node selector,
affinity, tolerations, priority class, image pull secrets, labels, a deadline) and replaces how
jobs are watched and stopped, where upstream hangs or fails silently:

- a job whose pod cannot start fails with the pod, the reason and the event text
  (`pod_status`): image pull errors, a missing Secret, OOMKilled, Evicted, the
  deadline, a quota that can never admit the pod at once; Unschedulable or a quota refusal that
  may clear once it has lasted `--kubernetes-pods-stuck-timeout` seconds. Upstream counts all
  of them as running until the deadline;
- the last lines of a failed pod's log (nadir copies its log there, with any traceback) are in
  the error message, and the whole log is kept in .snakemake/auxiliary/kubernetes-logs/;
- API answers 429 and 5xx and dropped connections are retried with back-off; a job whose status
  cannot be read stays active instead of being dropped (upstream drops it unreported);
- stopping the controller (Ctrl-C, an error) deletes every Job of the run, found by its
  `snakemake-run` label, and the run's Secret, even when one of those calls fails;
- pods do not `pip install` the S3 storage plugin at start: the nadir image ships it pinned;
- pods may reach S3 at another endpoint than the controller (inside and outside a cluster);
- a failed pod's log is read from its (only) container, not with `previous=True`, which a real
  API server refuses for a container that never restarted (Jobs run with restartPolicy Never).

Settings: those of the upstream plugin under the `--kubernetes-pods-` prefix, plus
`--kubernetes-pods-pod-settings FILE`, `--kubernetes-pods-stuck-timeout SECONDS` and
`--kubernetes-pods-log-lines N` and `--kubernetes-pods-s3-endpoint-in-pods URL`
(docs/kubernetes.md).
"""

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, AsyncGenerator, Callable, List, Optional  # noqa: UP035

import kubernetes.client
import snakemake_executor_plugin_kubernetes as upstream
import urllib3
from kubernetes.client.rest import ApiException
from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface

from nadir.core.errors import NadirError
from snakemake_executor_plugin_kubernetes_pods.pod_settings import (
    CONTAINER_NAME,
    RUN_LABEL,
    ClusterPodSettings,
    apply_pod_settings,
    label_value,
    load_pod_settings,
)
from snakemake_executor_plugin_kubernetes_pods.pod_status import Failed, Stuck, assess, log_tail

# API answers worth another try: too many requests, and the server or a proxy failing.
RETRIED_STATUSES = {429, 500, 502, 503, 504}
API_ATTEMPTS = 6  # back-off 1, 2, 4, 8, 16 s: about half a minute of outage is ridden out
MAX_BACKOFF_S = 30.0


def _model_of(job: JobExecutorInterface) -> str | None:
    """A job's `model` wildcard; for a group job (profile `groups:`), the one its jobs share."""
    if job.is_group():
        models = {(member.wildcards_dict or {}).get("model") for member in job.jobs}
        return models.pop() if len(models) == 1 else None
    return (job.wildcards_dict or {}).get("model")


@dataclass
class ExecutorSettings(upstream.ExecutorSettings):
    # Optional[...], not `| None`: Snakemake derives the CLI argument's type from it.
    pod_settings: Optional[str] = field(  # noqa: UP045
        default=None,
        metadata={"help": "YAML file with labels, nodeSelector, affinity, tolerations, "
                          "priorityClassName, imagePullSecrets and GPU resource names for every "
                          "pod (`all`), GPU pods (`gpu`), GPU classes (`gpu_classes`) and the "
                          "models that need one (`models`); see docs/kubernetes.md."},
    )
    stuck_timeout: int = field(
        default=1800,
        metadata={"help": "Seconds a job may wait for a node (Unschedulable) or for quota "
                          "(FailedCreate), or stay unreadable through API errors, before it "
                          "fails with the reason."},
    )
    log_lines: int = field(
        default=40,
        metadata={"help": "Lines of a failed pod's log quoted in the error message."},
    )
    s3_endpoint_in_pods: Optional[str] = field(  # noqa: UP045
        default=None,
        metadata={"help": "S3 endpoint URL for pods when it differs from the controller's "
                          "--storage-s3-endpoint-url (a cluster's in-cluster endpoint, e.g. "
                          "http://rook-ceph-rgw-nautiluss3.rook on NRP Nautilus)."},
    )


common_settings = dataclasses.replace(upstream.common_settings,
                                      auto_deploy_default_storage_provider=False)


class _AmendingBatchApi(kubernetes.client.BatchV1Api):
    """BatchV1Api whose Job creation passes the manifest through `amend` first.

    A creation retried after a dropped connection may find its Job already made (the name is
    derived from run, job and attempt, so a 409 can only be this job's): that Job is returned.
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


class _CurrentLogCoreApi(kubernetes.client.CoreV1Api):
    """CoreV1Api that reads the log of the pod's current container, never `previous`."""

    def read_namespaced_pod_log(self, name: str, namespace: str, **kwargs: Any) -> Any:
        kwargs["previous"] = False
        return super().read_namespaced_pod_log(name, namespace, **kwargs)


class Executor(upstream.Executor):
    def __post_init__(self) -> None:
        settings = self.workflow.executor_settings
        path = settings.pod_settings
        try:
            self.pod_settings = load_pod_settings(path) if path else ClusterPodSettings()
        except NadirError as error:
            raise WorkflowError(str(error)) from None
        self._job_in_submission: JobExecutorInterface | None = None
        self._stuck_since: dict[str, float] = {}
        self._unreadable_since: dict[str, float] = {}
        self._secret_deleted = False
        super().__post_init__()
        self.logger.info(f"Kubernetes run {self.run_namespace}: kubectl -n {self.namespace} get "
                         f"pods -l {RUN_LABEL}={label_value(self.run_namespace)}"
                         + (f" (pod settings from {path})" if path else ""))

    # The upstream executor assigns both clients in __post_init__ and again after it
    # re-authenticates; these setters wrap whatever it assigns.
    @property
    def batchapi(self) -> kubernetes.client.BatchV1Api:
        return self._batchapi

    @batchapi.setter
    def batchapi(self, api: kubernetes.client.BatchV1Api) -> None:
        self._batchapi = _AmendingBatchApi(api.api_client, self._amend_job)

    @property
    def kubeapi(self) -> kubernetes.client.CoreV1Api:
        return self._kubeapi

    @kubeapi.setter
    def kubeapi(self, api: kubernetes.client.CoreV1Api) -> None:
        self._kubeapi = _CurrentLogCoreApi(api.api_client)

    # --- API calls ---------------------------------------------------------------------
    def _with_retries(self, call: Callable[[], Any]) -> Any:
        """`call()`, retried with back-off on 429/5xx and dropped connections; 401 makes the
        upstream code re-authenticate; other API errors are raised as they are."""
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

    def _kubernetes_retry(self, func: Callable[[], Any]) -> Any:
        """Upstream's entry point for API calls, with nadir's retries."""
        try:
            return self._with_retries(func)
        except (ApiException, urllib3.exceptions.HTTPError, ConnectionError) as error:
            raise WorkflowError(f"Kubernetes request failed: {_api_error_text(error)}") from error

    # --- submission --------------------------------------------------------------------
    def run_job(self, job: JobExecutorInterface) -> None:
        self._job_in_submission = job
        try:
            super().run_job(job)
        except WorkflowError as error:
            raise WorkflowError(f"Kubernetes refused the Job of rule {job.name} "
                                f"(jobid {job.jobid}): {error}") from None
        finally:
            self._job_in_submission = None

    def _amend_job(self, body: Any) -> dict[str, Any]:
        job = self._job_in_submission
        if job is None:
            raise WorkflowError("bug: a Job was created outside run_job")
        manifest = self._batchapi.api_client.sanitize_for_serialization(body)
        resources = dict(job.resources)
        runtime_min = resources.get("runtime")
        gpu_class = self.pod_settings.gpu_class(resources.get("gpu_class"), _model_of(job))
        try:
            settings = self.pod_settings.for_job(requests_gpu=bool(resources.get("gpu")),
                                                 gpu_class=gpu_class)
        except KeyError as error:
            raise WorkflowError(f"rule {job.name}: {error.args[0]}") from None
        amended = apply_pod_settings(
            manifest, settings, rule=job.name, run_id=self.run_namespace,
            shm_mb=resources.get("shm_mb"),
            deadline_s=int(runtime_min * 60) if runtime_min else None,
            s3_endpoint=self.workflow.executor_settings.s3_endpoint_in_pods,
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
            return self._unreadable(job_info, error)
        except (urllib3.exceptions.HTTPError, ConnectionError) as error:
            return self._unreadable(job_info, error)
        self._unreadable_since.pop(name, None)
        if _succeeded(job, pod):
            self.logger.info(f"Job {name} succeeded.")
            self.report_job_success(job_info)
            self._delete_job(name)
            return False
        verdict = assess(job, pod, events)
        if isinstance(verdict, Stuck):
            timeout = self.workflow.executor_settings.stuck_timeout
            if name not in self._stuck_since:
                self._stuck_since[name] = time.monotonic()
                self.logger.info(f"{verdict.describe(name).replace(' failed:', ' waits:')} "
                                 f"(it fails after {timeout} s: --kubernetes-pods-stuck-timeout)")
            if time.monotonic() - self._stuck_since[name] < timeout:
                return True
            verdict = Failed(verdict.reason, f"{verdict.detail} (for more than {timeout} s, "
                                             f"--kubernetes-pods-stuck-timeout)", verdict.pod)
        self._stuck_since.pop(name, None)
        if verdict is None:
            return True
        self._fail(job_info, verdict, pod_running=pod is not None and _container_ran(pod))
        return False

    def _observe(self, name: str) -> tuple[dict, dict | None, list[dict]]:
        """The Job, its newest pod and, when something is wrong, the events of both (JSON)."""
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
            for involved in filter(None, [name, (pod or {}).get("metadata", {}).get("name")]):
                listed = self._with_retries(lambda involved=involved: self.kubeapi
                                            .list_namespaced_event(
                                                self.namespace,
                                                field_selector=f"involvedObject.name={involved}"))
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
            except (ApiException, urllib3.exceptions.HTTPError, ConnectionError) as error:
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
        selector = f"{RUN_LABEL}={label_value(self.run_namespace)}"
        try:
            listed = self._with_retries(lambda: self.batchapi.list_namespaced_job(
                self.namespace, label_selector=selector))
            names |= {item.metadata.name for item in listed.items}
        except (ApiException, urllib3.exceptions.HTTPError, ConnectionError) as error:
            self.logger.warning(f"Could not list this run's Jobs ({_api_error_text(error)}); "
                                f"check with kubectl -n {self.namespace} get jobs -l {selector}")
        for name in sorted(names):
            self.logger.info(f"Deleting Kubernetes Job {name}")
            self._delete_job(name)

    def shutdown(self) -> None:
        """Delete the run's Secret (once, whatever fails), then stop watching jobs."""
        try:
            if not self._secret_deleted:
                self._secret_deleted = True
                self._with_retries(lambda: self.kubeapi.delete_namespaced_secret(
                    self.run_namespace, self.namespace))
        except ApiException as error:
            if error.status != 404:
                self._secret_left(error)
        except (urllib3.exceptions.HTTPError, ConnectionError) as error:
            self._secret_left(error)
        finally:
            RemoteExecutor.shutdown(self)

    def _secret_left(self, error: Exception) -> None:
        self.logger.error(f"Could not delete this run's Secret ({_api_error_text(error)}): "
                          f"kubectl -n {self.namespace} delete secret {self.run_namespace}")


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
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}: {error.body or ''}".strip()
    return f"{type(error).__name__}: {error}"

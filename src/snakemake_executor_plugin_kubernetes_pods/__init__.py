"""Snakemake executor `kubernetes-pods`: the upstream Kubernetes executor plus nadir's pod settings.

Every Job is built by snakemake-executor-plugin-kubernetes (0.5.1) exactly as with
`--executor kubernetes`; this plugin only amends the finished manifest just before it is sent
(`nadir.kubernetes.apply_pod_settings`): /dev/shm, node selector, affinity, tolerations, image
pull secrets, labels, a deadline. Two behaviours differ from upstream, both on purpose:

- pods do not `pip install` the S3 storage plugin at start: the nadir image ships it pinned, so
  pods need no package index and run the version CI tested;
- a failed pod's log is read from its (only) container, not with `previous=True`, which a real
  API server refuses for a container that never restarted (Jobs run with restartPolicy Never).

Settings: those of the upstream plugin under the `--kubernetes-pods-` prefix, plus
`--kubernetes-pods-pod-settings FILE` (docs/kubernetes.md).
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import kubernetes.client
import snakemake_executor_plugin_kubernetes as upstream
from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface

from nadir.errors import NadirError
from nadir.kubernetes import ClusterPodSettings, apply_pod_settings, load_pod_settings


@dataclass
class ExecutorSettings(upstream.ExecutorSettings):
    # Optional[...], not `| None`: Snakemake derives the CLI argument's type from it.
    pod_settings: Optional[str] = field(  # noqa: UP045
        default=None,
        metadata={"help": "YAML file with labels, nodeSelector, affinity, tolerations and "
                          "imagePullSecrets for every pod (`all`) and for GPU pods (`gpu`); "
                          "see docs/kubernetes.md."},
    )


common_settings = dataclasses.replace(upstream.common_settings,
                                      auto_deploy_default_storage_provider=False)


class _AmendingBatchApi(kubernetes.client.BatchV1Api):
    """BatchV1Api whose Job creation passes the manifest through `amend` first."""

    def __init__(self, api_client: kubernetes.client.ApiClient, amend) -> None:
        super().__init__(api_client)
        self._amend = amend

    def create_namespaced_job(self, namespace: str, body: Any, **kwargs: Any) -> Any:
        return super().create_namespaced_job(namespace, self._amend(body), **kwargs)


class _CurrentLogCoreApi(kubernetes.client.CoreV1Api):
    """CoreV1Api that reads the log of the pod's current container, never `previous`."""

    def read_namespaced_pod_log(self, name: str, namespace: str, **kwargs: Any) -> Any:
        kwargs["previous"] = False
        return super().read_namespaced_pod_log(name, namespace, **kwargs)


class Executor(upstream.Executor):
    def __post_init__(self) -> None:
        path = self.workflow.executor_settings.pod_settings
        try:
            self.pod_settings = load_pod_settings(path) if path else ClusterPodSettings()
        except NadirError as error:
            raise WorkflowError(str(error)) from None
        self._job_in_submission: JobExecutorInterface | None = None
        super().__post_init__()
        if path:
            self.logger.info(f"Pod settings from {path}; labels: snakemake-run="
                             f"{self.run_namespace}, snakemake-rule=<rule>.")

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

    def run_job(self, job: JobExecutorInterface) -> None:
        self._job_in_submission = job
        try:
            super().run_job(job)
        finally:
            self._job_in_submission = None

    def _amend_job(self, body: Any) -> dict[str, Any]:
        job = self._job_in_submission
        if job is None:
            raise WorkflowError("bug: a Job was created outside run_job")
        manifest = self._batchapi.api_client.sanitize_for_serialization(body)
        resources = dict(job.resources)
        runtime_min = resources.get("runtime")
        amended = apply_pod_settings(
            manifest,
            self.pod_settings.for_job(requests_gpu=bool(resources.get("gpu"))),
            rule=job.name,
            run_id=self.run_namespace,
            shm_mb=resources.get("shm_mb"),
            deadline_s=int(runtime_min * 60) if runtime_min else None,
        )
        self.logger.debug(f"Job {amended['metadata']['name']} of rule {job.name} with pod "
                          f"settings applied: {amended['spec']['template']['spec']}")
        return amended

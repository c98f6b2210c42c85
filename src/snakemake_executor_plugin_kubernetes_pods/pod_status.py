"""Why a Kubernetes Job of the pipeline is not running: read from the Job, its pod and events.

The upstream executor (0.5.1) looks only at the Job's failed/succeeded counts and the container's
exit code, so a pod that can never start (Unschedulable, ImagePullBackOff, a missing Secret, a
refused pod) counts as running until its deadline, days later. `assess` turns what the API
reports into one of three answers, each naming the pod, the reason and the event text:

- `Failed`: the job cannot succeed any more (a non-zero exit, OOMKilled, an eviction or
  preemption, the deadline, an image that cannot be pulled, a pod that admission refuses: a
  LimitRange maximum, an unknown or banned PriorityClass, a webhook, a quota it can never fit);
- `Stuck`: the job waits for something that may still come: a node or quota (`queued`: GPU
  jobs may wait longer), or its container being created (volumes, sandbox, image pull), or a
  pod not created or scheduled yet; the executor fails it once it has waited longer than its
  grace period, naming the state it waited in;
- None: running.

Objects are the API's JSON (camelCase), as `ApiClient.sanitize_for_serialization` gives them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from snakemake_executor_plugin_kubernetes_pods.pod_settings import CONTAINER_NAME

# Container waiting reasons that do not go away by waiting (the kubelet keeps retrying a pull,
# but a missing image or a refused pull secret does not appear by itself).
FATAL_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                 "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
QUOTA_MESSAGE = re.compile(r"exceeded quota: [^,]+, requested: (?P<requested>\S+), "
                           r"used: (?P<used>\S+), limited: (?P<limited>\S+)")


# Why a pod was stopped from outside (its DisruptionTarget condition's reason) -> the reason the
# executor reports. None of them is an error of the job: a retry runs it again.
DISRUPTIONS = {"PreemptionByScheduler": "Preempted", "EvictionByEvictionAPI": "Evicted",
               "TerminationByKubelet": "Evicted", "DeletionByTaintManager": "Evicted",
               "DeletionByPodGC": "NodeLost"}
# The Job controller's message when a pod failure policy rule on DisruptionTarget fails a Job:
# `Pod NAMESPACE/NAME has condition DisruptionTarget matching FailJob rule at index 0`.
DISRUPTED_JOB = re.compile(r"Pod [^/\s]+/(?P<pod>\S+) has condition DisruptionTarget")


@dataclass(frozen=True)
class Failed:
    reason: str
    detail: str
    pod: str | None = None

    def describe(self, job: str) -> str:
        where = f"pod {self.pod}" if self.pod else "no pod"
        return f"Kubernetes Job {job} ({where}) failed: {self.reason}: {self.detail}"


@dataclass(frozen=True)
class Stuck(Failed):
    """Not failed yet: fails once stuck for longer than the grace period.

    `queued`: waiting for a node or for quota, which a busy cluster's GPUs make long.
    """

    queued: bool = False


def _parse_quantity(text: str) -> float | None:
    suffixes = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10,
                "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text)
    if not match or match.group(2) not in suffixes:
        return None
    return float(match.group(1)) * suffixes[match.group(2)]


def quota_never_fits(message: str) -> bool:
    """True when a quota refusal asks for more than the quota allows at all (not just now).

    Kubernetes words it `exceeded quota: NAME, requested: R=2, used: R=0, limited: R=1`.
    """
    match = QUOTA_MESSAGE.search(message)
    if not match:
        return False
    parts = {key: dict(item.split("=", 1) for item in match.group(key).split(",") if "=" in item)
             for key in ("requested", "limited")}
    for resource, requested in parts["requested"].items():
        limit = parts["limited"].get(resource)
        wanted, allowed = _parse_quantity(requested), _parse_quantity(limit or "")
        if wanted is not None and allowed is not None and wanted > allowed:
            return True
    return False


def _by_time(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def _event_text(events: list[dict[str, Any]], any_type: bool = False) -> str:
    """The newest Warning event; with `any_type`, the newest event of any type when no Warning
    is there (a pull in progress is a Normal `Pulling` event)."""
    warned = [e for e in events if e.get("type") == "Warning"]
    latest = _by_time(warned or (events if any_type else []))[-1:]
    return "; ".join(f"event {e.get('reason')}: {e.get('message')}" for e in latest)


def _joined(*parts: str | None) -> str:
    return "; ".join(p for p in parts if p) or "no message from Kubernetes"


def disrupted_pod(job: dict[str, Any]) -> str | None:
    """The pod named by a Job that a pod failure policy failed for a DisruptionTarget condition
    (its events say whether the scheduler preempted it), or None."""
    failed = _failed_condition(job) or {}
    match = DISRUPTED_JOB.search(failed.get("message") or "")
    return match.group("pod") if failed.get("reason") == "PodFailurePolicy" and match else None


def _failed_condition(job: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in (job.get("status") or {}).get("conditions") or []
                 if c.get("type") == "Failed" and c.get("status") == "True"), None)


def assess(job: dict[str, Any], pod: dict[str, Any] | None,
           events: list[dict[str, Any]]) -> Failed | None:
    """Failed, Stuck or None (see the module docstring); `events` are the Job's and the pod's
    (and a disrupted pod's, when the Job names one)."""
    pod_name = (pod or {}).get("metadata", {}).get("name")
    failed = _failed_condition(job)
    disruption = _disruption(job, pod, events)
    if disruption:
        return disruption
    # The deadline explains the pod's end; otherwise the pod's own reason (OOMKilled, Evicted)
    # says more than the Job's BackoffLimitExceeded.
    if failed and (failed.get("reason") == "DeadlineExceeded" or pod is None):
        return Failed(failed.get("reason") or "Failed",
                      _joined(failed.get("message"), _event_text(events)), pod_name)
    if pod is None:
        return _no_pod(events)
    verdict = _pod_verdict(pod, events)
    if verdict is None and failed:
        return Failed(failed.get("reason") or "Failed",
                      _joined(failed.get("message"), _event_text(events)), pod_name)
    return verdict


def _disruption(job: dict[str, Any], pod: dict[str, Any] | None,
                events: list[dict[str, Any]]) -> Failed | None:
    """A pod stopped from outside: preempted by the scheduler, evicted, its node gone. Its
    container then ends with SIGTERM's 143, which says nothing; the pod's DisruptionTarget
    condition says what happened, and once the pod is deleted, the Job's failure (the profile's
    pod failure policy) and the scheduler's `Preempted` event on the pod do."""
    for condition in ((pod or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            reason = DISRUPTIONS.get(condition.get("reason") or "", "Disrupted")
            return Failed(reason, _joined(f"{condition.get('reason')}: {condition.get('message')}",
                                          "the job is retried"),
                          pod["metadata"].get("name"))
    name = disrupted_pod(job)
    if name is None:
        return None
    preempted = [e for e in events if e.get("reason") == "Preempted"
                 and (e.get("involvedObject") or {}).get("name") in (name, None)]
    message = _failed_condition(job).get("message")
    if preempted:
        latest = _by_time(preempted)[-1].get("message")
        return Failed("Preempted", _joined(f"event Preempted: {latest}", message,
                                           "the job is retried"), name)
    return Failed("Disrupted", _joined(message, "preempted, evicted or its node lost; the job "
                                                "is retried"), name)


def _no_pod(events: list[dict[str, Any]]) -> Failed | None:
    """A Job without a pod: its pod refused at creation, or not created yet."""
    refused = [e for e in events
               if e.get("type") == "Warning" and e.get("reason") == "FailedCreate"]
    if not refused:
        return Stuck("PodNotCreated", "the Job has created no pod yet and says nothing about why")
    message = _by_time(refused)[-1].get("message") or ""
    if QUOTA_MESSAGE.search(message) and not quota_never_fits(message):
        return Stuck("FailedCreate", message, None, queued=True)
    # A quota the pod can never fit, a LimitRange maximum, an unknown or banned PriorityClass, a
    # validating webhook: the Job controller would refuse the same pod again and again.
    return Failed("FailedCreate", message, None)


def _pod_verdict(pod: dict[str, Any], events: list[dict[str, Any]]) -> Failed | None:
    pod_name = pod.get("metadata", {}).get("name")
    pod_status = pod.get("status") or {}
    container = next((c for c in pod_status.get("containerStatuses") or []
                      if c.get("name") == CONTAINER_NAME), None)
    state = (container or {}).get("state") or {}
    terminated, waiting = state.get("terminated"), state.get("waiting")
    if terminated and terminated.get("exitCode") not in (None, 0):
        reason = pod_status.get("reason") or terminated.get("reason") or "Error"
        detail = _joined(pod_status.get("message"), terminated.get("message"),
                         f"exit code {terminated['exitCode']}"
                         + (" (killed: out of memory, or by the node)"
                            if terminated["exitCode"] == 137 else ""))
        return Failed(reason, detail, pod_name)
    if pod_status.get("phase") == "Failed":
        return Failed(pod_status.get("reason") or "Failed",
                      _joined(pod_status.get("message"), _event_text(events)), pod_name)
    if waiting and waiting.get("reason") in FATAL_WAITING:
        return Failed(waiting["reason"], _joined(waiting.get("message"), _event_text(events)),
                      pod_name)
    for condition in pod_status.get("conditions") or []:
        if (condition.get("type") == "PodScheduled" and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"):
            return Stuck("Unschedulable", _joined(condition.get("message"),
                                                   _event_text(events)), pod_name, queued=True)
    if pod_status.get("phase") != "Pending":
        return None
    if waiting:  # scheduled: volumes mounted, sandbox made, image pulled before it starts
        return Stuck(waiting.get("reason") or "ContainerCreating",
                     _joined(waiting.get("message"), _event_text(events, any_type=True)),
                     pod_name)
    return Stuck("Pending", _joined("not scheduled or started yet",
                                    _event_text(events, any_type=True)), pod_name)


def log_tail(log: str, lines: int) -> str:
    """The last `lines` lines of a pod log, indented, for an error message.

    When the last Python traceback starts earlier, the tail starts with it (up to three times
    `lines`): in a pod the tool's traceback is followed by Snakemake's own report of the failure.
    """
    all_lines = log.rstrip("\n").splitlines()
    start = max(0, len(all_lines) - lines)
    tracebacks = [n for n, line in enumerate(all_lines) if line.startswith("Traceback (most")]
    if tracebacks and len(all_lines) - 3 * lines <= tracebacks[-1] < start:
        start = tracebacks[-1]
    return "\n".join(f"    {line}" for line in all_lines[start:])

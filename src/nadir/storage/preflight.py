"""What a run needs before Snakemake builds its DAG: settings a profile leaves to the user, S3 keys,
and an S3 endpoint that answers.

The cluster profiles mark what a user must set with `EDIT` (`EDIT-your-namespace`,
`s3://EDIT-bucket/...`). A run that still has such a value, or that stores its files in S3 without
keys in the environment, or whose endpoint does not answer, would otherwise fail while the DAG is
built, with one exception per file checked in storage: thousands of lines for the pipeline. These
checks name what to set, in one short message.

The workflow calls `check_controller_start` as it is read, in the controller only: Snakemake reads
the workflow again in every job (a pod), where the endpoint may differ and the keys come from the
run's Secret. The Kubernetes executor finds its own options' placeholders (namespace, CPU image)
when Snakemake reads them, before the workflow, and leaves them here (`defer_problems`), so that
the same message names them; its executor stops on them itself when no check ran.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from nadir.core.errors import NadirError
from nadir.storage.s3 import STORAGE_KEY_VARIABLES as KEY_VARIABLES

PLACEHOLDER = re.compile(r"\bEDIT\b")
ENDPOINT_TIMEOUT_S = 10.0


class SettingsError(NadirError):
    """A setting the run needs is missing, still a profile's placeholder, or does not work."""


# Problems an executor found in its own options, for the next check_controller_start.
_deferred: list[str] = []


def defer_problems(problems: list[str]) -> None:
    """Leave problems found before the workflow is read for check_controller_start to name."""
    _deferred[:] = problems


def deferred_problems() -> list[str]:
    return list(_deferred)


def placeholder_problems(settings: Mapping[str, Any]) -> list[str]:
    """One line per setting (option name -> value) whose value is still a profile's placeholder."""
    return [f"{name}: still the profile's placeholder ({value})"
            for name, value in settings.items()
            if isinstance(value, str) and PLACEHOLDER.search(value)]


def endpoint_problem(url: str, timeout_s: float = ENDPOINT_TIMEOUT_S) -> str | None:
    """Why `url` does not answer HTTP, or None when it answers (with any status: an S3 server
    refuses an unsigned request, which is an answer)."""
    if not url.lower().startswith(("http://", "https://")):
        return f"{url} is not an http(s):// address"
    try:
        # http(s) only, checked just above: urllib opens no file:// or other scheme here.
        request = urllib.request.Request(url, method="HEAD")  # noqa: S310
        urllib.request.urlopen(request, timeout=timeout_s)  # noqa: S310
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return f"{url} does not answer ({reason}): check the address, and that this machine " \
               f"reaches it"
    return None


def s3_problems(endpoint: str | None, access_key: str | None, secret_key: str | None) -> list[str]:
    """What keeps a run from using S3: missing keys, an endpoint that does not answer."""
    problems = []
    missing = [name for name, value in zip(KEY_VARIABLES, (access_key, secret_key), strict=True)
               if not value]
    if missing:
        problems.append(f"{' and '.join(missing)}: not in the environment (export the S3 keys; "
                        f"never as command-line flags, which Snakemake writes to its log)")
    if endpoint:
        trouble = endpoint_problem(endpoint)
        if trouble:
            problems.append(f"storage-s3-endpoint-url: {trouble}")
    return problems


def check_controller_start(workflow: Any) -> None:
    """Raise SettingsError naming every storage setting still to set, before the DAG is built.

    `workflow` is Snakemake's, as the workflow sees it while it is read: the storage settings are
    known then; the executor's are not, its problems come from `defer_problems`.
    """
    storage = workflow.storage_settings
    problems = deferred_problems()
    problems += placeholder_problems({"default-storage-prefix": storage.default_storage_prefix})
    if storage.default_storage_provider == "s3":
        s3 = workflow.storage_provider_settings["s3"].get_settings()
        endpoint_placeholder = placeholder_problems({"storage-s3-endpoint-url": s3.endpoint_url})
        problems += endpoint_placeholder
        problems += s3_problems(None if endpoint_placeholder else s3.endpoint_url,
                                s3.access_key, s3.secret_key)
    if problems:
        raise SettingsError(settings_message(problems))


def settings_message(problems: list[str]) -> str:
    """The one message for every problem found: what to set, and where."""
    lines = "\n".join(f"  - {problem}" for problem in problems)
    return (f"cannot start the run; set:\n{lines}\nin the profile's config.yaml (the lines "
            f"marked EDIT) or on the command line (docs/kubernetes.md).")


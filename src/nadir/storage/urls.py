"""URLs as nadir records them, hands them to jobs, and follows their redirects.

A URL in the config may carry a secret: user info (`https://user:token@host/`), a pre-signed
query (`?X-Amz-Signature=...`, `?token=...`) or a fragment. `redact` is the one form in which a
URL is written anywhere (logs, manifests, summaries, reports, job command lines): without those
parts, with a short hash of the whole URL so that two such URLs stay apart. A job that needs
the whole URL gets its redacted form on its command line and looks it up with `resolve` in the
environment variable NADIR_URLS, which the workflow fills from the config each time it is
parsed (by the controller, and by each job's own Snakemake on a cluster); environment
variables appear in no command line, log or pod spec.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from nadir.core.errors import NadirError
from nadir.core.redaction import MARKER, redact

ENVIRONMENT = "NADIR_URLS"


def is_redacted(url: str) -> bool:
    return "://" in url and urlsplit(url).query.startswith(MARKER)


def publish(urls: Iterable[str]) -> None:
    """Make the whole form of each URL that `redact` changes available to `resolve` in this
    process and the jobs it starts (the environment variable NADIR_URLS)."""
    known = json.loads(os.environ.get(ENVIRONMENT) or "{}")
    known.update({redact(url): url for url in urls if redact(url) != url})
    if known:
        os.environ[ENVIRONMENT] = json.dumps(known, sort_keys=True)


def resolve(recorded: str) -> str:
    """The whole URL behind a redacted one (from NADIR_URLS); anything else as it is."""
    if not is_redacted(recorded):
        return recorded
    known = json.loads(os.environ.get(ENVIRONMENT) or "{}")
    if recorded not in known:
        raise NadirError(f"{recorded}: this URL was recorded without its secret parts and "
                         f"{ENVIRONMENT} does not hold it; run the job through the workflow "
                         "(which sets it from the config), or give the whole URL")
    return known[recorded]


# --- redirects -------------------------------------------------------------------------------

def _is_public(host: str) -> bool | None:
    """Whether every address `host` resolves to is a public (global) one; None: unknown."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return None
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_global for info in infos)


def redirect_refusal(old: str, new: str) -> str | None:
    """Why a download must not follow a redirect from `old` to `new`, or None to follow it.

    Refused: anything but http(s); https to http (the body and any later secrets would travel
    in clear); and a public host sending the request on to a private, loopback or link-local
    address (a cloud metadata service, the cluster's internal services). A private host may
    redirect within private addresses (an internal mirror).
    """
    before, after = urlsplit(old), urlsplit(new)
    if after.scheme not in ("http", "https"):
        return f"it leads to a {after.scheme or 'scheme-less'} URL; only http(s) is followed"
    if before.scheme == "https" and after.scheme == "http":
        return "it leaves https for http"
    if after.hostname and _is_public(after.hostname) is False \
            and before.hostname and _is_public(before.hostname) is not False:
        return (f"it leads from the public host {before.hostname} to the non-public "
                f"address {after.hostname}")
    return None

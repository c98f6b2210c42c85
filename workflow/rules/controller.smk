# One controller per results location (nadir.controller): the run claims its S3 default storage
# prefix, or its working directory, before its first job and gives it back when it ends. Jobs
# (started with --no-hooks), dry runs and reports never run these handlers.

from nadir.controller import Lease, claim, owner_store, release
from nadir.errors import NadirError


def _owner_store():
    default = workflow.storage_settings  # (`storage` is a Snakemake keyword)
    prefix = default.default_storage_prefix if default.default_storage_provider == "s3" else None
    s3 = (workflow.storage_provider_settings or {}).get("s3")
    settings = s3.get_settings() if s3 and prefix else None
    return owner_store(
        prefix,
        getattr(settings, "endpoint_url", None),
        getattr(settings, "access_key", None),
        getattr(settings, "secret_key", None),
    )


_OWNER = {}


onstart:
    try:
        _OWNER["record"] = claim(_owner_store())
        _OWNER["lease"] = Lease(_owner_store(), _OWNER["record"])
    except NadirError as error:
        raise WorkflowError(str(error)) from None


onsuccess:
    if "record" in _OWNER:
        release(_owner_store(), _OWNER["record"], _OWNER["lease"])


onerror:
    if "record" in _OWNER:
        release(_owner_store(), _OWNER["record"], _OWNER["lease"])

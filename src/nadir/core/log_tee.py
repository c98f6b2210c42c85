"""Copy what a nadir command writes to stderr onto stdout as well, inside Kubernetes pods.

Rules send a command's stderr (its progress log, warnings and any traceback) to the rule's log
file with `2> {log}`; that file reaches the bucket only when the job succeeds. Inside a pod the
command's stdout is the container's output, so with this copy `kubectl logs -f` shows training
iterations while they run, and the log the controller reads from a failed pod ends with the
traceback. Pods switch it on with NADIR_TEE_STDERR=1 (`POD_ENVIRONMENT` in
snakemake_executor_plugin_kubernetes_pods/pod_settings.py); on a laptop stderr goes to the log
file only, as before.

Only Python-level writes are copied (logging, warnings, tracebacks, print to stderr): output a C
library writes straight to file descriptor 2 stays in the log file.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

SWITCH = "NADIR_TEE_STDERR"


class Tee:
    """A text stream that writes to `primary` and copies each write to `copy`, flushed."""

    def __init__(self, primary: TextIO, copy: TextIO) -> None:
        self.primary, self.copy = primary, copy

    def write(self, text: str) -> int:
        written = self.primary.write(text)
        self.copy.write(text)
        self.primary.flush()
        self.copy.flush()
        return written

    def flush(self) -> None:
        self.primary.flush()
        self.copy.flush()

    def __getattr__(self, name: str):
        return getattr(self.primary, name)


def tee_stderr_if_asked() -> None:
    """Make sys.stderr a Tee onto stdout when the environment asks for it and they differ."""
    if os.environ.get(SWITCH) != "1" or isinstance(sys.stderr, Tee):
        return
    if sys.stderr is None or sys.stdout is None:
        return
    try:
        if os.path.sameopenfile(sys.stderr.fileno(), sys.stdout.fileno()):
            return  # `2>&1` or no redirection: a copy would print every line twice
    except (OSError, ValueError, AttributeError):
        pass
    sys.stderr = Tee(sys.stderr, sys.stdout)

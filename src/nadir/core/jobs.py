"""How a rule's script runs one stage function, as every nadir job does.

Every rule calls its code through `script:` (workflow/scripts/<rule>.py), a few lines handing
`snakemake.input`, `output`, `params`, `threads` and the config to one stage function through
`run_job`, which gives each job the same frame: everything written to stderr (logging,
warnings, tracebacks, C libraries) goes to the rule's log file, copied onto stdout inside pods
(nadir.core.log_tee); idle OpenMP threads sleep; a NadirError (bad input or config) fails the
job with its message and no traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from nadir.core.errors import NadirError
from nadir.core.log_tee import tee_stderr_if_asked

log = logging.getLogger("nadir")


def report_errors(command: str, func: Callable[[], object]) -> int:
    """Run `func` with its progress logged to stderr; a NadirError ends it with its message
    and exit status 1 instead of a traceback."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        func()
    except NadirError as exc:
        log.error("%s", exc)
        print(f"nadir {command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def sleeping_openmp_threads() -> None:
    """Idle OpenMP threads sleep instead of spinning (libgomp's default), unless the user says
    otherwise. On cores that other work shares (a busy machine, a pod under a CPU limit),
    spinning made a 2-thread CPU training step 14 times slower (bench/omp_wait.py). OpenMP
    reads it when torch is first imported, which no stage does before a job starts."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_job(snakemake, func: Callable[[], object]) -> None:
    """Run one rule's stage function (`func`) in the job's frame: stderr to the rule's log,
    copied to stdout in pods, and a NadirError failing the job with its message. `snakemake`
    is the object Snakemake gives the script."""
    sleeping_openmp_threads()
    sys.stderr.flush()
    log_fd = os.open(snakemake.log[0], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log_fd, sys.stderr.fileno())
    os.close(log_fd)
    tee_stderr_if_asked()
    status = report_errors(snakemake.rule, func)
    if status:
        sys.exit(status)

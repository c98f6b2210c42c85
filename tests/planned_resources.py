"""Snakemake's command line, printing at the end each planned job's rule and resources.

`python tests/planned_resources.py ARGS...` runs `snakemake ARGS...` in this process and, after
its output, prints one line `PLANNED <json>`: [rule, {resource: value}] per job it announced
(in a dry run, every job it plans). The resources are read from Snakemake's job-info log
events (the interface its logger plugins receive), since a dry run prints them only for rules
without a `message`.
"""

import json
import logging
import sys

from snakemake.cli import main
from snakemake_interface_logger_plugins.common import LogEvent

planned = []


class PlannedJobs(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == LogEvent.JOB_INFO:
            planned.append((record.rule_name,
                            {k: str(v) for k, v in record.resources.items()}))


# Snakemake replaces its own logger's handlers; its records reach the parent's.
logging.getLogger("snakemake").addHandler(PlannedJobs())
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exit:
    code = exit.code
print("PLANNED " + json.dumps(planned))
sys.exit(code)

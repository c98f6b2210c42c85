"""A training job in a process of its own, as the train rule's script runs it (the stage
function, its log on stderr, a bad input failing with its message):

    python tests/train_job.py '<the keyword arguments of nadir.train.train, as JSON>'
"""

import json
import sys

from nadir.core.jobs import report_errors, sleeping_openmp_threads
from nadir.train import train

if __name__ == "__main__":
    sleeping_openmp_threads()
    sys.exit(report_errors("train", lambda: train(**json.loads(sys.argv[1]))))

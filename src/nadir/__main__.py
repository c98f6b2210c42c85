import sys

from nadir.cli import main
from nadir.core.log_tee import tee_stderr_if_asked

tee_stderr_if_asked()
sys.exit(main())

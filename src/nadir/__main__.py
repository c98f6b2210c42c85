import sys

from nadir.cli import main

sys.exit(main())

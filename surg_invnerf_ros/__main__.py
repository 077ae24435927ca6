"""`python -m surg_invnerf_ros` runs the command line."""

import sys

from .apps.cli import main

sys.exit(main())

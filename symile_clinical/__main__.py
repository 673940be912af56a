"""`python -m symile_clinical` runs the command line."""

import sys

from symile_clinical.cli import main

sys.exit(main())

"""`python -m host_tools.cli ARGS` is `lanterne ARGS`."""

import sys

from host_tools.cli import main

sys.exit(main())

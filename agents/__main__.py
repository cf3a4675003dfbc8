"""``python -m agents`` runs the ``metering`` command line."""

import sys

from agents.cli import main

sys.exit(main())

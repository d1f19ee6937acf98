"""`python -m retirement` runs the `retire` command line."""

from __future__ import annotations

import sys

from retirement.cli import main

sys.exit(main())

"""`python -m tokworld` (and `accelerate launch -m tokworld`) runs the CLI."""

import sys

from tokworld.cli import main

sys.exit(main())

"""`python -m wattserve` is the `wattserve` command."""

import sys

from wattserve.cli import main

sys.exit(main())

"""A handler module that ends the process when imported (tests/specs/bad/59)."""

import sys

sys.exit(0)

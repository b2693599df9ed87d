"""`python -m harness.serve` == `python -m harness serve`."""

import sys

from harness.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))

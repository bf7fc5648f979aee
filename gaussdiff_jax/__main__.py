"""`python -m gaussdiff_jax ...` runs the `gaussdiff` command."""

import sys

from .cli import main

sys.exit(main())

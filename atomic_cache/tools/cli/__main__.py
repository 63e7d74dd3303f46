"""``python -m atomic_cache.tools.cli``."""

import sys

from .commands import main

sys.exit(main())

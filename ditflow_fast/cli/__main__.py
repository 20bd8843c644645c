"""``python -m ditflow_fast.cli``: the same command as ``ditflow-fast``."""

import sys

from .main import main

sys.exit(main())

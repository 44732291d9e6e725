"""``python -m fastinject``: the ``fastinject`` command (see :mod:`fastinject.workers.cli`)."""

import sys

from .workers.cli import main

sys.exit(main())

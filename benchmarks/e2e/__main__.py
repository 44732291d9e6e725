"""Entry point of ``python -m benchmarks.e2e``."""

import importlib.util
import sys
from pathlib import Path

# A plain checkout (fastinject not installed) imports the package from src/.
if importlib.util.find_spec("fastinject") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from benchmarks.e2e.cli import main

sys.exit(main())

"""``python -m benchmarks.attacks``: see :mod:`benchmarks.attacks.cli`."""

from benchmarks.attacks.cli import main

main()

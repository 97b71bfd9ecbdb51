"""``python -m bench``: see bench/harness.py."""

import sys
from pathlib import Path

# The benchmarks are scripts beside each other (python bench/fanout.py), importing each other by
# their file names; run as a package, they are found the same way.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import main

raise SystemExit(main())

"""Entry point of ``make bench`` (``python benchmarks/run.py``); see benchmarks/main.py."""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.main import main

    sys.exit(main())

"""``python -m asrd.emulator ARGS``: same as ``asrd emulator ARGS``."""

import sys

from asrd.emulator.cli import main

sys.exit(main())

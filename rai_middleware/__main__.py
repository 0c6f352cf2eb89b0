"""``python -m rai_middleware check [--settings MODULE | --app MODULE:APP] [--probe WHO]``."""

from __future__ import annotations

import sys

from ._check import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m encore.frontends.ui [ui options]``: the same as ``encore ui``."""

from __future__ import annotations

import sys

from encore.frontends.ui.cli import main

if __name__ == "__main__":
    sys.exit(main())

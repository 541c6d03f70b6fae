"""``python -m encore.frontends.server [serve options]``: the same as ``encore serve`` (used by tests and scripts)."""

from __future__ import annotations

import argparse
import logging
import sys

from encore.frontends.server.cli import register


def main(argv: list[str] | None = None) -> int:
    """Parse `serve` options and run the server."""
    parser = argparse.ArgumentParser(prog="python -m encore.frontends.server")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

"""The `retire` command line: every module of this package adds its subcommands."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from retirement.errors import RetirementError


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand; each module here defines ``register(subparsers)``."""
    parser = argparse.ArgumentParser(
        prog="retire",
        description="Retire production ML models safely: document, cut over, verify idle, back up, delete, monitor.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug details.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if callable(register):
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `retire` command; errors of the library print as one line and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        for noisy in ("httpx", "httpcore", "prefect"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code = args.func(args)
    except (RetirementError, ValidationError) as exc:
        print(f"retire {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())

"""`retire ledger`: show, verify and export the audit ledger."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from retirement.bootstrap import stores
from retirement.ledger import Ledger, verify_file
from retirement.settings import RetireSettings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `retire ledger verify`, `retire ledger show` and `retire ledger export`."""
    parser = subparsers.add_parser("ledger", help="Show, verify or export the audit ledger.")
    sub = parser.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    verify = sub.add_parser(
        "verify", help="Check the hash chain; names the first edited, removed, moved or truncated entry."
    )
    verify.add_argument("--path", type=Path, help="Check an exported JSON-lines ledger instead of the database.")
    verify.set_defaults(func=_verify)
    show = sub.add_parser("show", help="Print the entries, optionally of one retirement.")
    show.add_argument("retirement_id", nargs="?", help="Only this retirement.")
    show.set_defaults(func=_show)
    export = sub.add_parser("export", help="Write the whole ledger as JSON lines (check it with verify --path).")
    export.add_argument("path", type=Path, help="The file to write.")
    export.set_defaults(func=_export)


def _ledger() -> Ledger:
    return stores(RetireSettings())[0]


def _verify(args: argparse.Namespace) -> int:
    if args.path is not None:
        count, last = verify_file(args.path)
        print(f"ledger {args.path}: OK, {count} entries, last hash {last}")
        return 0
    ledger = _ledger()
    count, last = ledger.verify()
    print(f"ledger {ledger.name}: OK, {count} entries, last hash {last}")
    return 0


def _show(args: argparse.Namespace) -> int:
    for event in _ledger().entries(args.retirement_id):
        print(json.dumps(event.model_dump(mode="json"), sort_keys=True))
    return 0


def _export(args: argparse.Namespace) -> int:
    count = _ledger().export(args.path)
    print(f"{count} entries written to {args.path}")
    return 0

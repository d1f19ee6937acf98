"""`retire ledger`: show and verify the audit ledger."""

from __future__ import annotations

import argparse
import json

from retirement.ledger import Ledger
from retirement.settings import RetireSettings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `retire ledger verify` and `retire ledger show`."""
    parser = subparsers.add_parser("ledger", help="Show or verify the audit ledger.")
    sub = parser.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    verify = sub.add_parser("verify", help="Check the hash chain; names the first edited, removed or moved line.")
    verify.add_argument("--path", help="Ledger file (default: RETIRE_HOME/ledger.jsonl).")
    verify.set_defaults(func=_verify)
    show = sub.add_parser("show", help="Print the entries, optionally of one retirement.")
    show.add_argument("retirement_id", nargs="?", help="Only this retirement.")
    show.add_argument("--path", help="Ledger file (default: RETIRE_HOME/ledger.jsonl).")
    show.set_defaults(func=_show)


def _ledger(args: argparse.Namespace) -> Ledger:
    return Ledger(args.path or RetireSettings().ledger_file)


def _verify(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    count, last = ledger.verify()
    print(f"ledger {ledger.path}: OK, {count} entries, last hash {last}")
    return 0


def _show(args: argparse.Namespace) -> int:
    for event in _ledger(args).entries(args.retirement_id):
        print(json.dumps(event.model_dump(mode="json"), sort_keys=True))
    return 0

"""`retire ledger`: show, verify, export and anchor the audit ledger."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from retirement.anchor import keygen, load_public_key, public_id
from retirement.bootstrap import anchor, stores
from retirement.ledger import Ledger, verify_file
from retirement.settings import RetireSettings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `retire ledger verify|show|export|checkpoint|keygen`."""
    parser = subparsers.add_parser("ledger", help="Show, verify, export or anchor the audit ledger.")
    sub = parser.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    verify = sub.add_parser(
        "verify",
        help="Check the hash chain and its checkpoints; names the first edited, removed or moved entry, a truncation "
        "and a rewrite.",
    )
    verify.add_argument("--path", type=Path, help="Check an exported JSON-lines ledger instead of the database.")
    verify.set_defaults(func=_verify)
    show = sub.add_parser("show", help="Print the entries, optionally of one retirement.")
    show.add_argument("retirement_id", nargs="?", help="Only this retirement.")
    show.set_defaults(func=_show)
    export = sub.add_parser("export", help="Write the whole ledger as JSON lines (check it with verify --path).")
    export.add_argument("path", type=Path, help="The file to write.")
    export.set_defaults(func=_export)
    check = sub.add_parser("checkpoint", help="Anchor the ledger's head now (done at the end of every phase).")
    check.set_defaults(func=_checkpoint)
    gen = sub.add_parser("keygen", help="Print a new Ed25519 key pair for signing checkpoints.")
    gen.set_defaults(func=_keygen)


def _ledger() -> Ledger:
    return stores(RetireSettings())[0]


def _verify(args: argparse.Namespace) -> int:
    if args.path is not None:
        count, last = verify_file(args.path)
        print(f"ledger {args.path}: OK, {count} entries, last hash {last}")
        return 0
    settings = RetireSettings()
    ledger = _ledger()
    count, last = ledger.verify()
    anchored = anchor(settings)
    verify_key = load_public_key(settings.ledger_verify_key) if settings.ledger_verify_key else None
    if verify_key is None and anchored.signing_key is not None:
        verify_key = anchored.signing_key.public_key()
    checked, newest = anchored.verify(ledger.head(), ledger.hash_at, verify_key)
    signed = f"signed by {public_id(verify_key)}" if verify_key is not None else "unsigned (no verify key set)"
    print(f"ledger {ledger.name}: OK, {count} entries, last hash {last}")
    print(f"checkpoints {anchored.path}: {checked} checked, {signed}, newest at entry {newest}")
    return 0


def _show(args: argparse.Namespace) -> int:
    for event in _ledger().entries(args.retirement_id):
        print(json.dumps(event.model_dump(mode="json"), sort_keys=True))
    return 0


def _export(args: argparse.Namespace) -> int:
    count = _ledger().export(args.path)
    print(f"{count} entries written to {args.path}")
    return 0


def _checkpoint(args: argparse.Namespace) -> int:
    point = anchor(RetireSettings()).checkpoint(_ledger().head(), "by hand")
    print(f"checkpoint of entry {point.seq} ({point.hash[:16]}...) " + ("signed" if point.signature else "unsigned"))
    return 0


def _keygen(args: argparse.Namespace) -> int:
    private, public = keygen()
    print(f"RETIRE_LEDGER_SIGNING_KEY={private}")
    print(f"RETIRE_LEDGER_VERIFY_KEY={public}")
    print("# the signing key goes to the workers' secret store only; the verify key to whoever audits")
    return 0

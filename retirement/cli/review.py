"""`retire review`: the quarterly retention review, printed as a table or JSON."""

from __future__ import annotations

import argparse

from retirement.models import utcnow
from retirement.platforms import get_platform
from retirement.policy import Policy, load_policy
from retirement.review import (
    ReviewStore,
    platform_catalog,
    quarter_of,
    render_table,
    report_json,
    run_review,
    traffic_for,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `retire review`."""
    parser = subparsers.add_parser(
        "review",
        help="List every version, apply the retention policy, show candidates for retirement and why.",
        description="Review every model version against the retention policy. Changes nothing on any platform; "
        "--save keeps the report under RETIRE_HOME/reviews/ so the next quarter's review shows what changed.",
    )
    parser.add_argument(
        "--platform",
        action="append",
        dest="platforms",
        metavar="NAME",
        help="Platform to review (repeatable; default: local).",
    )
    parser.add_argument("--policy", metavar="FILE", help="Retention policy YAML (default: the built-in default).")
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
    parser.add_argument("--save", action="store_true", help="Save the report as this quarter's review.")
    parser.set_defaults(func=_review)


def _review(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy) if args.policy else Policy.default()
    names = list(dict.fromkeys(args.platforms or ["local"]))
    now = utcnow()
    store = ReviewStore()
    platforms = {name: get_platform(name) for name in names}
    try:
        catalogs = {name: platform_catalog(p) for name, p in platforms.items()}
        report = run_review(
            catalogs,
            policy,
            now=now,
            previous=store.previous(quarter_of(now)),
            traffic=traffic_for(policy, platforms),
        )
    finally:
        for p in platforms.values():
            p.close()
    print(report_json(report) if args.json else render_table(report), end="\n" if args.json else "")
    if args.save:
        path = store.save(report)
        if not args.json:
            print(f"saved {path}")
    return 0

"""`retire local`: look after the embedded local platform (models, versions, aliases, the demo)."""

from __future__ import annotations

import argparse
import re

from retirement.errors import InputError
from retirement.models import ModelRef
from retirement.platforms.local import LocalRegistry
from retirement.settings import RetireSettings

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "ki": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "mi": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "gi": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
    "ti": 1024**4,
}


def parse_size(text: str, field: str = "--size") -> int:
    """Bytes from ``64MiB``, ``2GiB``, ``500MB`` or a plain number of bytes.

    Raises:
        InputError: naming ``field`` when the text is not a size.
    """
    match = _SIZE_RE.match(text or "")
    if not match:
        raise InputError(field, f"{text!r} is not a size", "bytes or a number with KiB, MiB, GiB, KB, MB, GB")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


def human_size(size: int | None) -> str:
    """``size`` bytes in the largest binary unit that keeps it above 1."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _registry() -> LocalRegistry:
    return LocalRegistry(RetireSettings().local_dir)


def _ref(text: str) -> ModelRef:
    return ModelRef.parse(text, "local", field="REF")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `retire local ...`."""
    parser = subparsers.add_parser("local", help="The embedded local platform: models, versions, aliases, demo.")
    sub = parser.add_subparsers(dest="local_command", metavar="ACTION", required=True)

    sub.add_parser("init", help="Create the platform's folder and catalogue.").set_defaults(func=_init)

    seed = sub.add_parser("seed-demo", help="Create a demo model: version 1 in production, version 2 its replacement.")
    seed.add_argument("--size", default="64MiB", help="Bytes per version, e.g. 64MiB, 2GiB (default 64MiB).")
    seed.add_argument("--name", default="churn-model", help="Model name (default churn-model).")
    seed.add_argument("--reset", action="store_true", help="Remove the demo model first if it exists.")
    seed.set_defaults(func=_seed)

    sub.add_parser("models", help="List the models.").set_defaults(func=_models)

    versions = sub.add_parser("versions", help="List the versions of a model.")
    versions.add_argument("name", metavar="NAME")
    versions.set_defaults(func=_versions)

    show = sub.add_parser("show", help="Show a version: files, tags, metrics, dependents, blockers.")
    show.add_argument("ref", metavar="REF", help="name@version or name@alias")
    show.set_defaults(func=_show)

    alias = sub.add_parser("alias", help="Point an alias (production, staging, ...) at a version.")
    alias.add_argument("name", metavar="NAME")
    alias.add_argument("alias", metavar="ALIAS")
    alias.add_argument("version", metavar="VERSION")
    alias.set_defaults(func=_alias)

    for action, help_text in (
        ("deactivate", "Deactivate a version: the gateway answers 410 Gone."),
        ("activate", "Reactivate a deactivated version."),
    ):
        p = sub.add_parser(action, help=help_text)
        p.add_argument("ref", metavar="REF", help="name@version")
        p.set_defaults(func=_set_active, active=action == "activate")

    tag = sub.add_parser("tag", help="Set a tag on a version (or on the model with REF = name).")
    tag.add_argument("ref", metavar="REF")
    tag.add_argument("key", metavar="KEY")
    tag.add_argument("value", metavar="VALUE")
    tag.set_defaults(func=_tag)

    consumer = sub.add_parser("consumer", help="Declare or withdraw a consumer of a version (it blocks deletion).")
    csub = consumer.add_subparsers(dest="consumer_command", metavar="ACTION", required=True)
    add = csub.add_parser("add", help="Declare that NAME uses REF.")
    add.add_argument("ref", metavar="REF")
    add.add_argument("consumer", metavar="NAME")
    add.add_argument("--detail", default="", help="What it uses the model for, who owns it.")
    add.set_defaults(func=_consumer_add)
    remove = csub.add_parser("remove", help="Withdraw a declared consumer.")
    remove.add_argument("ref", metavar="REF")
    remove.add_argument("consumer", metavar="NAME")
    remove.set_defaults(func=_consumer_remove)

    delete = sub.add_parser("delete", help="Delete a version now (no backup, no traffic check; the flow does those).")
    delete.add_argument("ref", metavar="REF", help="name@version")
    delete.add_argument("--yes", action="store_true", help="Confirm the deletion.")
    delete.set_defaults(func=_delete)


def _init(args: argparse.Namespace) -> int:
    root = _registry().init()
    print(f"local platform ready at {root}")
    return 0


def _seed(args: argparse.Namespace) -> int:
    size = parse_size(args.size)
    registry = _registry()
    old, new = registry.seed_demo(total_bytes=size, name=args.name, reset=args.reset)
    for ref, role in ((old, "in production (alias production)"), (new, "its replacement (stage staging)")):
        total = sum(size for _, size in registry.files(ref))
        print(f"{ref}  {human_size(total):>10}  {role}")
    print(f"root: {registry.root}")
    print("next: `retire gateway serve`, then POST /v1/models/" + f"{old.name}@production/predict")
    return 0


def _models(args: argparse.Namespace) -> int:
    registry = _registry()
    rows = []
    for name in registry.list_models():
        versions = registry.describe(ModelRef(platform="local", name=name)).versions
        aliases = ", ".join(f"{a}->{v}" for a, v in registry.aliases(name).items())
        rows.append([name, str(len(versions)), aliases or "-"])
    print(_table(rows, ["MODEL", "VERSIONS", "ALIASES"]) if rows else "no models (try `retire local seed-demo`)")
    return 0


def _versions(args: argparse.Namespace) -> int:
    registry = _registry()
    dossier = registry.describe(ModelRef(platform="local", name=args.name))
    rows = [
        [
            v.version,
            v.stage or "-",
            ", ".join(v.aliases) or "-",
            "active" if v.active else "DEACTIVATED",
            human_size(v.size_bytes),
            v.created_at.strftime("%Y-%m-%d %H:%M:%S") if v.created_at else "-",
        ]
        for v in dossier.versions
    ]
    print(_table(rows, ["VERSION", "STAGE", "ALIASES", "STATE", "SIZE", "CREATED (UTC)"]) if rows else "no versions")
    return 0


def _resolve(registry: LocalRegistry, text: str) -> ModelRef:
    ref = _ref(text)
    if ref.version is None:
        raise InputError("REF", f"{text!r} names no version", "name@version or name@alias, e.g. churn-model@1")
    return registry.resolve(ref.name, ref.version)


def _show(args: argparse.Namespace) -> int:
    registry = _registry()
    ref = _resolve(registry, args.ref)
    d = registry.describe(ref)
    meta = d.metadata
    print(f"{ref}  ({'active' if meta.get('active') else 'DEACTIVATED'}, stage {meta.get('stage') or '-'})")
    if d.description:
        print(f"model: {d.description}")
    if meta.get("description"):
        print(f"version: {meta['description']}")
    print("serving: " + (", ".join(d.deployed_at) or "no alias"))
    print("metrics: " + (", ".join(f"{k}={v}" for k, v in d.metrics.items()) or "-"))
    print("tags: " + (", ".join(f"{k}={v}" for k, v in (meta.get("tags") or {}).items()) or "-"))
    print("files:")
    for f in meta.get("files", []):
        print(f"  {f['path']:<28} {human_size(f['size']):>10}  sha256 {f['sha256']}")
    print("dependents: " + (", ".join(f"{x.kind} {x.name}" for x in d.dependents) or "none"))
    print("deletion blockers: " + ("; ".join(f"{b.message} ({b.remedy})" for b in d.blockers) or "none"))
    for issue in d.known_issues:
        print(f"note: {issue}")
    return 0


def _alias(args: argparse.Namespace) -> int:
    previous = _registry().set_alias(args.name, args.alias, args.version)
    if previous == args.version:
        print(f"{args.name}@{args.alias} already points at version {args.version}")
    else:
        print(f"{args.name}@{args.alias} -> version {args.version} (was {previous or 'unset'})")
    return 0


def _set_active(args: argparse.Namespace) -> int:
    registry = _registry()
    ref = _ref(args.ref)
    registry.set_active(ref, args.active)
    state = "active" if args.active else "deactivated (the gateway answers 410 Gone)"
    print(f"{ref} is {state}")
    return 0


def _tag(args: argparse.Namespace) -> int:
    ref = _ref(args.ref)
    _registry().set_tag(ref, args.key, args.value)
    print(f"{ref}: {args.key}={args.value}")
    return 0


def _consumer_add(args: argparse.Namespace) -> int:
    ref = _ref(args.ref)
    _registry().add_consumer(ref, args.consumer, args.detail)
    print(f"{args.consumer} declared as a consumer of {ref} (it blocks deletion until removed)")
    return 0


def _consumer_remove(args: argparse.Namespace) -> int:
    ref = _ref(args.ref)
    _registry().remove_consumer(ref, args.consumer)
    print(f"{args.consumer} is no longer a consumer of {ref}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    ref = _ref(args.ref)
    if not args.yes:
        raise InputError("--yes", f"deleting {ref} is permanent and needs confirmation", "--yes")
    receipt = _registry().delete(ref)
    print(f"deleted {ref}: {len(receipt.removed)} item(s) removed, gone: {receipt.verified_gone}")
    for item in receipt.removed:
        print(f"  {item}")
    return 0

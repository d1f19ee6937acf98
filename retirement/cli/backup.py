"""`retire backup`: create, verify, list, restore and purge backups of model versions."""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import timedelta

from retirement.backup.filesystem import FilesystemBackupStore
from retirement.backup.restore import VersionImporter, purge, restore
from retirement.backup.s3 import S3BackupStore, parse_backup_url, split_location
from retirement.bootstrap import backup_store, stores
from retirement.errors import ConflictError, InputError
from retirement.models import BackupManifest, ModelRef, utcnow
from retirement.platforms import get_platform
from retirement.settings import RetireSettings

_MIB = 1 << 20


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `retire backup create|verify|list|restore|purge`."""
    parser = subparsers.add_parser(
        "backup",
        help="Create, verify, list, restore or purge backups of model versions.",
        description="Backups go to RETIRE_BACKUP_URL (s3://BUCKET[/PREFIX] under Object Lock, or file:///PATH); "
        "unset: the filesystem store under RETIRE_HOME/backups.",
    )
    sub = parser.add_subparsers(dest="backup_command", metavar="ACTION", required=True)

    create = sub.add_parser("create", help="Back up a version (stream, hash, write in one pass), then verify it.")
    create.add_argument("ref", metavar="REF", help="The version to back up, as name@version (e.g. churn-model@1).")
    create.add_argument("--platform", default="local", help="Platform the model lives on (default: local).")
    create.add_argument(
        "--retain-days",
        type=int,
        default=30,
        help="Days the backup must be kept (default: 30; never below the operator's RETIRE_MIN_BACKUP_RETENTION_DAYS).",
    )
    create.add_argument("--workers", type=int, default=2, help="Files downloaded at the same time (default: 2).")
    create.add_argument("--quiet", action="store_true", help="No progress lines on stderr.")
    create.set_defaults(func=_create)

    verify = sub.add_parser("verify", help="Re-read every file of a backup against its manifest; exit 1 on a mismatch.")
    verify.add_argument(
        "location", metavar="LOCATION", help="The backup's folder or s3:// location, as printed by `backup create`."
    )
    verify.set_defaults(func=_verify)

    listing = sub.add_parser("list", help="Backups, newest first (of one model or version when given).")
    listing.add_argument("ref", metavar="REF", nargs="?", help="name or name@version; every backup when omitted.")
    listing.add_argument("--platform", default="local", help="Platform of REF (default: local).")
    listing.set_defaults(func=_list)

    restore_cmd = sub.add_parser("restore", help="Verify a backup, then import it back as the version it was taken of.")
    restore_cmd.add_argument("location", metavar="LOCATION", help="The backup's folder or s3:// location.")
    restore_cmd.set_defaults(func=_restore)

    purge_cmd = sub.add_parser(
        "purge",
        help="Delete backups past their retain-until date, after a confirmation; a backup still to be kept is refused.",
    )
    purge_cmd.add_argument(
        "locations",
        metavar="LOCATION",
        nargs="*",
        help="Backups to purge; when omitted, every backup of the store past its retain-until date.",
    )
    purge_cmd.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")
    purge_cmd.set_defaults(func=_purge)


Store = FilesystemBackupStore | S3BackupStore


def _store(settings: RetireSettings, workers: int = 2) -> Store:
    """The store RETIRE_BACKUP_URL names (the filesystem store under RETIRE_HOME when unset)."""
    return backup_store(settings, workers=workers)


def _store_at(location: str, settings: RetireSettings) -> Store:
    """The store holding ``location``: its bucket for ``s3://...``, else the filesystem store."""
    if location.strip().lower().startswith("s3://"):
        bucket, _ = split_location(location, "LOCATION")
        target = parse_backup_url(settings.backup_url)
        prefix = target.prefix if target is not None and target.bucket == bucket else ""
        return S3BackupStore.from_settings(bucket, prefix)
    configured = _store(settings)
    return configured if isinstance(configured, FilesystemBackupStore) else FilesystemBackupStore(settings.backup_dir)


def _progress(done: int, total: int | None) -> None:
    of = f" of {total / _MIB:,.0f} MiB" if total else ""
    print(f"  {done / _MIB:,.0f} MiB{of}", file=sys.stderr, flush=True)


def _create(args: argparse.Namespace) -> int:
    settings = RetireSettings()
    ref = ModelRef.parse(args.ref, args.platform, field="REF")
    if args.retain_days < max(1, settings.min_backup_retention_days):
        raise InputError(
            "--retain-days",
            f"is {args.retain_days}",
            f"at least {max(1, settings.min_backup_retention_days)} (RETIRE_MIN_BACKUP_RETENTION_DAYS)",
        )
    store = _store(settings, args.workers)
    platform = get_platform(args.platform, settings)
    try:
        registry = platform.registry
        dossier = registry.describe(ref)
        items = registry.export(ref)
        manifest = store.write(
            ref,
            items,
            retain_until=utcnow() + timedelta(days=args.retain_days),
            dossier=dossier.model_dump(mode="json"),
            captures=registry.capabilities.exports,
            not_captured=registry.capabilities.not_exportable,
            platform_metadata=dossier.metadata,
            progress=None if args.quiet else _progress,
        )
    finally:
        platform.close()
    print(f"backup of {ref}: {manifest.location}")
    print(f"  {len(manifest.files)} files, {manifest.total_bytes} bytes, retain until {manifest.retain_until:%Y-%m-%d}")
    report = store.verify(manifest.location)
    if not report.ok:
        print(f"  verify FAILED: {len(report.mismatches)} mismatches", file=sys.stderr)
        for line in report.mismatches:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"  verified: {report.files_checked} files, {report.bytes_checked} bytes re-read, all match")
    return 0


def _verify(args: argparse.Namespace) -> int:
    report = _store_at(args.location, RetireSettings()).verify(args.location)
    if not report.ok:
        print(f"backup {report.location}: FAILED, {len(report.mismatches)} mismatches")
        for line in report.mismatches:
            print(line)
        return 1
    print(f"backup {report.location}: OK, {report.files_checked} files, {report.bytes_checked} bytes re-read")
    return 0


def _line(manifest: BackupManifest) -> str:
    return (
        f"{manifest.created_at:%Y-%m-%d %H:%M:%S}  {manifest.source}  {len(manifest.files)} files  "
        f"{manifest.total_bytes} bytes  retain until {manifest.retain_until:%Y-%m-%d}  {manifest.location}"
    )


def _list(args: argparse.Namespace) -> int:
    ref = None if args.ref is None else ModelRef.parse(args.ref, args.platform, field="REF")
    manifests = _store(RetireSettings()).list(ref)
    if not manifests:
        print("no backups" + (f" of {ref}" if ref is not None else ""))
    for manifest in manifests:
        print(_line(manifest))
    return 0


def _restore(args: argparse.Namespace) -> int:
    settings = RetireSettings()
    store = _store_at(args.location, settings)
    source = store.manifest(args.location).source
    platform = get_platform(source.platform, settings)
    try:
        registry = platform.registry
        if not isinstance(registry, VersionImporter):
            raise ConflictError(f"platform {source.platform!r} cannot import a version; restore it by hand")
        restored = restore(store, args.location, registry)
    finally:
        platform.close()
    print(f"restored {restored} on {restored.platform} from {args.location}")
    return 0


def _backups(count: int) -> str:
    return f"{count} backup" if count == 1 else f"{count} backups"


def _confirm(count: int) -> bool:
    try:
        answer = input(f"Delete {'this backup' if count == 1 else f'these {count} backups'} for good? [y/N] ")
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def _purge(args: argparse.Namespace) -> int:
    settings = RetireSettings()
    now = utcnow()
    chosen: list[tuple[Store, BackupManifest]] = []
    refused = 0
    if args.locations:
        for location in dict.fromkeys(args.locations):
            store = _store_at(location, settings)
            manifest = store.manifest(location)
            if manifest.retain_until > now:
                refused += 1
                print(
                    f"refused: {manifest.location} must be kept until {manifest.retain_until:%Y-%m-%d %H:%M:%S} UTC",
                    file=sys.stderr,
                )
            else:
                chosen.append((store, manifest))
    else:
        store = _store(settings)
        chosen = [(store, m) for m in reversed(store.list()) if m.retain_until <= now]
    if not chosen:
        print("no backup past its retain-until date to purge")
        return 1 if refused else 0
    print(f"{_backups(len(chosen))} past the retain-until date:")
    for _, manifest in chosen:
        print(f"  {_line(manifest)}")
    if not args.yes and not _confirm(len(chosen)):
        print("nothing purged")
        return 1
    ledger, _ = stores(settings)
    actor = _user()
    failed = 0
    for store, manifest in chosen:
        detail = {"location": manifest.location, "retain_until": manifest.retain_until.isoformat()}
        ledger.append("backups", "intent", "backup-purge", actor=actor, reference=str(manifest.source), detail=detail)
        try:
            purge(store, manifest.location, now=utcnow())
        except ConflictError as exc:
            failed += 1
            ledger.append(
                "backups",
                "outcome",
                "backup-purge",
                actor=actor,
                reference=str(manifest.source),
                detail={**detail, "refused": str(exc)},
            )
            print(f"refused: {exc}", file=sys.stderr)
            continue
        ledger.append("backups", "outcome", "backup-purge", actor=actor, reference=str(manifest.source), detail=detail)
        print(f"purged {manifest.location}")
    return 1 if refused or failed else 0


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"

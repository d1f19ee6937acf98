"""Backups past retain-until: `retire review` lists them, `retire backup purge` deletes those and only those."""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retirement.backup.filesystem import FilesystemBackupStore
from retirement.backup.restore import purge
from retirement.backup.s3 import S3BackupStore
from retirement.bootstrap import stores
from retirement.cli import main
from retirement.errors import ConflictError, InputError
from retirement.models import BackupManifest, CatalogEntry, ExportItem, ModelRef
from retirement.platforms.local import LocalRegistry
from retirement.review import review_backups
from retirement.settings import RetireSettings, S3BackupSettings
from tests.fakes.s3 import MotoServer, locked_bucket, moto_s3, s3_env

__all__ = ["locked_bucket", "moto_s3", "s3_env"]

FILES = {"MLmodel": b"flavor: sklearn\n", "weights/model.bin": bytes(range(256)) * 64}
LATER = datetime.now(UTC) + timedelta(days=30)


def items() -> list[ExportItem]:
    return [ExportItem(path=p, open=lambda d=d: iter([d]), size=len(d)) for p, d in FILES.items()]


def wait_until_past(when: datetime) -> None:
    """Sleep (at most 10 s) until ``when`` is in the past, on this machine's clock, which the S3 server shares."""
    deadline = time.monotonic() + 10
    while datetime.now(UTC) <= when + timedelta(milliseconds=200):
        assert time.monotonic() < deadline, f"{when} did not pass"
        time.sleep(0.2)


def s3_store(bucket: str) -> S3BackupStore:
    return S3BackupStore.from_settings(bucket, "retire", S3BackupSettings())


def versions_under(server: MotoServer, bucket: str, location: str) -> list[str]:
    prefix = location.split("/", 3)[3] + "/"
    answer = server.client().list_object_versions(Bucket=bucket, Prefix=prefix)
    return [v["Key"] for v in [*answer.get("Versions", []), *answer.get("DeleteMarkers", [])]]


@pytest.fixture
def two_backups(
    s3_env: MotoServer, locked_bucket: str, settings: RetireSettings, monkeypatch: pytest.MonkeyPatch
) -> tuple[BackupManifest, BackupManifest]:
    """On S3: an expired backup of churn-model@1 (since deleted), and a kept one of churn-model@2 (still there)."""
    monkeypatch.setenv("RETIRE_BACKUP_URL", f"s3://{locked_bucket}/retire")
    registry = LocalRegistry(settings.local_dir)
    old, new = registry.seed_demo(total_bytes=64 * 1024)
    store = s3_store(locked_bucket)
    expired = store.write(old, registry.export(old), retain_until=datetime.now(UTC) + timedelta(seconds=2))
    kept = store.write(new, registry.export(new), retain_until=LATER)
    registry.set_alias(old.name, "production", new.version or "2")
    registry.delete(old)
    wait_until_past(expired.retain_until)
    return expired, kept


@pytest.mark.s3
def test_review_lists_the_expired_backup_with_its_purge_command_and_the_one_whose_model_exists(
    two_backups: tuple[BackupManifest, BackupManifest], locked_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    expired, kept = two_backups
    assert main(["review"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("BACKUPS") :]
    assert (
        f"Backups in s3://{locked_bucket}/retire: 2, 1 past their retain-until date (ready to purge), 1 of " in section
    )
    ready = section[section.index("PAST RETAIN-UNTIL, READY TO PURGE (1)") : section.index("MODEL STILL EXISTS")]
    assert f"local:churn-model@1  kept until {expired.retain_until:%Y-%m-%d}" in ready
    assert f"retire backup purge {expired.location}" in ready
    assert kept.location not in ready
    exists = section[section.index("MODEL STILL EXISTS (1)") :]
    assert "local:churn-model@2" in exists and kept.location in exists
    assert expired.location not in exists

    assert main(["review", "--json"]) == 0
    backups = json.loads(capsys.readouterr().out)["backups"]
    assert [b["purge_command"] for b in backups["expired"]] == [f"retire backup purge {expired.location}"]
    assert [b["location"] for b in backups["model_exists"]] == [kept.location]


@pytest.mark.s3
def test_purge_deletes_only_the_expired_backup(
    two_backups: tuple[BackupManifest, BackupManifest],
    s3_env: MotoServer,
    locked_bucket: str,
    settings: RetireSettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    expired, kept = two_backups
    assert main(["backup", "purge", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "1 backup past the retain-until date:" in out
    assert f"purged {expired.location}" in out
    assert kept.location not in out

    assert versions_under(s3_env, locked_bucket, expired.location) == []  # every version, not a delete marker
    store = s3_store(locked_bucket)
    assert [m.location for m in store.list()] == [kept.location]
    assert store.verify(kept.location).ok
    ledger, _ = stores(settings)
    assert [(e.kind, e.detail["location"]) for e in ledger.entries("backups")] == [
        ("intent", expired.location),
        ("outcome", expired.location),
    ]

    assert main(["backup", "purge", "--yes"]) == 0
    assert "no backup past its retain-until date to purge" in capsys.readouterr().out


@pytest.mark.s3
def test_purge_refuses_a_backup_still_to_be_kept_and_so_does_the_server(
    two_backups: tuple[BackupManifest, BackupManifest],
    s3_env: MotoServer,
    locked_bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, kept = two_backups
    assert main(["backup", "purge", "--yes", kept.location]) == 1
    captured = capsys.readouterr()
    assert f"refused: {kept.location} must be kept until {kept.retain_until:%Y-%m-%d %H:%M:%S} UTC" in captured.err
    assert "purged" not in captured.out

    store = s3_store(locked_bucket)
    with pytest.raises(ConflictError, match=r"S3 refused to delete .* \(Object Lock keeps them"):
        purge(store, kept.location, now=kept.retain_until + timedelta(days=1))  # a clock that lies
    assert store.verify(kept.location).ok


@pytest.mark.s3
def test_purge_asks_first(
    two_backups: tuple[BackupManifest, BackupManifest],
    s3_env: MotoServer,
    locked_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    expired, _ = two_backups
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert main(["backup", "purge"]) == 1
    out = capsys.readouterr().out
    assert "Delete this backup for good? [y/N]" in out and "nothing purged" in out
    assert versions_under(s3_env, locked_bucket, expired.location)

    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert main(["backup", "purge", expired.location]) == 0
    assert f"purged {expired.location}" in capsys.readouterr().out
    assert versions_under(s3_env, locked_bucket, expired.location) == []


# --- the filesystem store -------------------------------------------------------------------------


def test_purge_on_the_filesystem_store_deletes_only_expired_backups(
    settings: RetireSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = ModelRef(name="churn-model", version="1")
    store = FilesystemBackupStore(settings.backup_dir, fsync=False)
    old = store.write(ref, items(), retain_until=datetime.now(UTC) - timedelta(days=1))
    kept = store.write(ModelRef(name="churn-model", version="2"), items(), retain_until=LATER)

    assert main(["backup", "purge", old.location, kept.location, "--yes"]) == 1
    captured = capsys.readouterr()
    assert f"purged {old.location}" in captured.out
    assert f"refused: {kept.location} must be kept until" in captured.err
    assert not Path(old.location).exists()
    assert not (settings.backup_dir / "local" / "churn-model" / "1").exists()  # emptied folders go too
    assert [m.location for m in store.list()] == [kept.location]
    assert store.verify(kept.location).ok


def test_purge_never_deletes_a_folder_outside_the_backup_store(settings: RetireSettings, tmp_path: Path) -> None:
    elsewhere = FilesystemBackupStore(tmp_path / "elsewhere", fsync=False)
    old = elsewhere.write(ModelRef(name="m", version="1"), items(), retain_until=datetime.now(UTC) - timedelta(days=1))
    store = FilesystemBackupStore(settings.backup_dir)
    with pytest.raises(InputError, match="is not a backup folder under"):
        purge(store, old.location, now=datetime.now(UTC))
    assert elsewhere.verify(old.location).ok


def test_review_of_filesystem_backups_counts_platforms_it_did_not_review(settings: RetireSettings) -> None:
    store = FilesystemBackupStore(settings.backup_dir, fsync=False)
    now = datetime.now(UTC)
    gone = store.write(ModelRef(name="churn", version="1"), items(), retain_until=now - timedelta(days=1))
    live = store.write(ModelRef(name="churn", version="2"), items(), retain_until=LATER)
    store.write(ModelRef(platform="mlflow", name="fraud", version="3"), items(), retain_until=LATER)
    entries = [CatalogEntry(reference=ModelRef(name="churn", version="2"), created_at=now)]

    review = review_backups(store, entries, platforms=["local"], now=now)

    assert review.backups == 3
    assert [r.location for r in review.expired] == [gone.location]
    assert review.expired[0].purge_command == f"retire backup purge {gone.location}"
    assert [r.location for r in review.model_exists] == [live.location]
    assert review.unchecked == 1

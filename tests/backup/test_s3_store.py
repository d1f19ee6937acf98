"""The S3 backup store against a real S3 wire protocol (moto's server): write, verify, lock, restore, settings."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from retirement.backup.restore import restore
from retirement.backup.s3 import MIB, S3BackupStore, parse_backup_url
from retirement.bootstrap import backup_store
from retirement.cli import backup as backup_cli
from retirement.cli import main
from retirement.errors import BackupError, ConfigError, ConflictError, InputError
from retirement.gateway.server import GatewayProcess
from retirement.models import BackupManifest, ExportItem, ModelRef
from retirement.platforms.base import Platform
from retirement.platforms.local import LocalRegistry
from retirement.settings import RetireSettings, S3BackupSettings
from tests.fakes.s3 import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    SESSION_TOKEN,
    MotoServer,
    locked_bucket,
    make_bucket,
    moto_s3,
    s3_env,
)

__all__ = ["locked_bucket", "moto_s3", "s3_env"]

REF = ModelRef(platform="local", name="churn-model", version="3")
PART = 5 * MIB
BIG = bytes(random.Random(7).randbytes(PART)) * 2 + b"tail of the weights"  # three parts of 5 MiB
FILES = {"MLmodel": b"flavor: sklearn\n", "weights/model.bin": BIG, "empty.txt": b""}
RETAIN = datetime.now(UTC) + timedelta(days=30)


def items(files: dict[str, bytes] = FILES, chunk: int = 64 * 1024) -> list[ExportItem]:
    """Files as a platform streams them: in network-sized chunks, with their declared size and hash."""

    def opener(data: bytes) -> Iterator[bytes]:
        for start in range(0, len(data), chunk):
            yield data[start : start + chunk]

    return [
        ExportItem(path=p, open=lambda d=d: opener(d), size=len(d), sha256=hashlib.sha256(d).hexdigest())
        for p, d in files.items()
    ]


def store_on(bucket: str, lock_mode: str = "COMPLIANCE") -> S3BackupStore:
    settings = S3BackupSettings(RETIRE_BACKUP_S3_LOCK_MODE=lock_mode, RETIRE_BACKUP_S3_PART_SIZE_MIB=5)
    return S3BackupStore.from_settings(bucket, "backups/team-a", settings)


def key_of(location: str, path: str) -> str:
    return location.split("/", 3)[3] + "/" + path


# --- RETIRE_BACKUP_URL ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("gs://models/backups", "has scheme 'gs'"),
        ("/srv/backups", "is not a URL (no scheme)"),
        ("bucket/prefix", "is not a URL (no scheme)"),
        ("s3://Models_Backups/x", "is not a valid S3 bucket name"),
        ("s3://minio.local:9000/backups", "an endpoint goes in RETIRE_BACKUP_S3_ENDPOINT_URL"),
        ("s3://backups/a//b", "has an empty, '.' or '..' part"),
        ("s3://backups/x?versionId=1", "has a query or fragment"),
        ("file://nas/backups", "names a host ('nas')"),
        ("file:///", "has no absolute folder"),
    ],
)
def test_a_bad_backup_url_is_refused_naming_the_variable_and_what_is_allowed(value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_backup_url(value)
    message = str(info.value)
    assert message.startswith("RETIRE_BACKUP_URL: ")
    assert problem in message
    assert message.endswith(
        "(allowed: s3://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH; unset: the filesystem store "
        "under RETIRE_HOME/backups)"
    )


def test_a_backup_url_with_credentials_is_refused_without_repeating_them() -> None:
    with pytest.raises(ConfigError, match="RETIRE_BACKUP_URL: carries credentials") as info:
        parse_backup_url("s3://AKIAEXAMPLE:wJalrXUtnFEMI-secret@backups/prod")
    assert "wJalrXUtnFEMI-secret" not in str(info.value)
    assert "AKIAEXAMPLE" not in str(info.value)


def test_good_backup_urls_and_the_default(tmp_path: Path) -> None:
    assert parse_backup_url(None) is None
    assert parse_backup_url("  ") is None
    s3 = parse_backup_url("s3://model-backups/retire/prod/")
    assert s3 is not None and (s3.scheme, s3.bucket, s3.prefix) == ("s3", "model-backups", "retire/prod")
    local = parse_backup_url(f"file://{tmp_path}/backups")
    assert local is not None and local.path == tmp_path / "backups"


def test_the_cli_says_which_variable_is_wrong(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RETIRE_BACKUP_URL", "https://s3.amazonaws.com/model-backups")
    assert main(["backup", "list"]) == 2
    err = capsys.readouterr().err
    assert "RETIRE_BACKUP_URL: 'https://s3.amazonaws.com/model-backups' has scheme 'https'" in err
    assert "allowed: s3://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH" in err


def test_a_bad_lock_mode_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RETIRE_BACKUP_URL", "s3://model-backups")
    monkeypatch.setenv("RETIRE_BACKUP_S3_LOCK_MODE", "forever")
    assert main(["backup", "list"]) == 2
    err = capsys.readouterr().err
    assert "RETIRE_BACKUP_S3_LOCK_MODE" in err and "'COMPLIANCE' or 'GOVERNANCE'" in err


def test_unset_means_the_filesystem_store_under_retire_home_and_file_urls_name_a_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RETIRE_BACKUP_URL", raising=False)
    assert getattr(backup_store(RetireSettings()), "root", None) == RetireSettings().home / "backups"
    monkeypatch.setenv("RETIRE_BACKUP_URL", f"file://{tmp_path}/shared-backups")
    assert getattr(backup_store(RetireSettings()), "root", None) == tmp_path / "shared-backups"
    monkeypatch.setenv("RETIRE_BACKUP_ROOT", str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match="RETIRE_BACKUP_URL and RETIRE_BACKUP_ROOT name different places"):
        backup_store(RetireSettings())


# --- against the moto server ----------------------------------------------------------------------


@pytest.mark.s3
def test_a_bucket_without_object_lock_is_refused_before_anything_is_written(s3_env: MotoServer) -> None:
    bucket = make_bucket(s3_env, object_lock=False)
    with pytest.raises(ConfigError, match=r"does not have S3 Object Lock enabled \(bucket setting ObjectLockEnabled\)"):
        store_on(bucket).write(REF, items(), retain_until=RETAIN)
    assert s3_env.client().list_objects_v2(Bucket=bucket)["KeyCount"] == 0


@pytest.mark.s3
def test_write_streams_hashes_locks_and_lists(s3_env: MotoServer, locked_bucket: str) -> None:
    store = store_on(locked_bucket)
    seen: list[tuple[int, int | None]] = []
    manifest = store.write(
        REF, items(), retain_until=RETAIN, dossier={"reason": "v4"}, progress=lambda d, t: seen.append((d, t))
    )
    total = sum(len(d) for d in FILES.values())
    assert manifest.location.startswith(f"s3://{locked_bucket}/backups/team-a/local/churn-model/3/")
    assert {(f.path, f.size, f.sha256) for f in manifest.files} == {
        (p, len(d), hashlib.sha256(d).hexdigest()) for p, d in FILES.items()
    }
    assert seen[-1] == (total, total)

    client = s3_env.client()
    stored = BackupManifest.model_validate_json(
        client.get_object(Bucket=locked_bucket, Key=key_of(manifest.location, "manifest.json"))["Body"].read()
    )
    assert stored == manifest
    big = client.head_object(Bucket=locked_bucket, Key=key_of(manifest.location, "weights/model.bin"))
    assert big["ContentLength"] == len(BIG)
    assert big["ETag"].endswith('-3"')  # uploaded in three parts
    for path in [*FILES, "manifest.json", "dossier.json"]:
        head = client.head_object(Bucket=locked_bucket, Key=key_of(manifest.location, path))
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] >= RETAIN.replace(microsecond=0)
    assert client.list_multipart_uploads(Bucket=locked_bucket).get("Uploads", []) == []

    report = store.verify(manifest.location)
    assert report.ok, report.mismatches
    assert (report.files_checked, report.bytes_checked) == (3, total)
    assert [m.location for m in store.list(REF)] == [manifest.location]
    assert [m.location for m in store.list(ModelRef(name="churn-model"))] == [manifest.location]
    assert [m.location for m in store.list()] == [manifest.location]
    assert b"".join(store.iter_file(manifest.location, "weights/model.bin")) == BIG


@pytest.mark.s3
def test_verify_names_a_flipped_byte_a_missing_and_an_extra_object(s3_env: MotoServer, locked_bucket: str) -> None:
    store = store_on(locked_bucket)
    location = store.write(REF, items(), retain_until=RETAIN).location
    client = s3_env.client()
    flipped = bytearray(BIG)
    flipped[PART + 100] ^= 0x01
    # Object Lock keeps every version, but a new version (or a delete marker) is what a plain read sees.
    client.put_object(Bucket=locked_bucket, Key=key_of(location, "weights/model.bin"), Body=bytes(flipped))
    client.delete_object(Bucket=locked_bucket, Key=key_of(location, "MLmodel"))
    client.put_object(Bucket=locked_bucket, Key=key_of(location, "weights/notes.txt"), Body=b"extra")

    report = store.verify(location)

    assert not report.ok
    sha = hashlib.sha256(BIG).hexdigest()
    assert report.mismatches == [
        "MLmodel: missing",
        f"weights/model.bin: sha256 differs (manifest {sha}, found {hashlib.sha256(flipped).hexdigest()})",
        f"weights/model.bin: not under Object Lock until {report.mismatches[2].split(' until ')[1]}",
        "weights/notes.txt: extra object, not in the manifest",
    ]
    assert "(no lock; reading a lock needs s3:GetObjectRetention)" in report.mismatches[2]
    assert main(["backup", "verify", location]) == 1


@pytest.mark.s3
def test_a_locked_version_cannot_be_deleted_before_retain_until(s3_env: MotoServer, locked_bucket: str) -> None:
    store = store_on(locked_bucket)
    location = store.write(REF, items(), retain_until=RETAIN).location
    client = s3_env.client()
    key = key_of(location, "weights/model.bin")
    [version] = client.list_object_versions(Bucket=locked_bucket, Prefix=key)["Versions"]

    with pytest.raises(ClientError) as info:
        client.delete_object(Bucket=locked_bucket, Key=key, VersionId=version["VersionId"])
    assert info.value.response["Error"]["Code"] == "AccessDenied"

    with pytest.raises(ConflictError, match=r"S3 refused to delete 3 object versions .*\(Object Lock keeps them"):
        store.delete(location)
    assert store.verify(location).ok  # nothing went, the manifest included


@pytest.mark.s3
def test_governance_mode_is_honoured_and_refuses_a_delete_without_bypass(
    s3_env: MotoServer, locked_bucket: str
) -> None:
    location = store_on(locked_bucket, "GOVERNANCE").write(REF, items(), retain_until=RETAIN).location
    client = s3_env.client()
    key = key_of(location, "MLmodel")
    assert client.head_object(Bucket=locked_bucket, Key=key)["ObjectLockMode"] == "GOVERNANCE"
    [version] = client.list_object_versions(Bucket=locked_bucket, Prefix=key)["Versions"]
    with pytest.raises(ClientError, match="AccessDenied"):
        client.delete_object(Bucket=locked_bucket, Key=key, VersionId=version["VersionId"])


@pytest.mark.s3
def test_a_failed_backup_leaves_nothing_behind(s3_env: MotoServer, locked_bucket: str) -> None:
    def broken() -> Iterator[bytes]:
        yield BIG[: 2 * PART]  # two whole parts go up first
        raise OSError("connection reset by peer")

    store = store_on(locked_bucket)
    bad = [*items({"MLmodel": FILES["MLmodel"]}), ExportItem(path="weights/model.bin", open=broken, size=len(BIG))]
    with pytest.raises(BackupError, match=r"weights/model\.bin: OSError: connection reset by peer"):
        store.write(REF, bad, retain_until=RETAIN)
    client = s3_env.client()
    assert client.list_object_versions(Bucket=locked_bucket).get("Versions", []) == []
    assert client.list_multipart_uploads(Bucket=locked_bucket).get("Uploads", []) == []
    assert store.list() == []


@pytest.mark.s3
def test_a_declared_hash_that_does_not_match_fails_and_leaves_nothing(s3_env: MotoServer, locked_bucket: str) -> None:
    store = store_on(locked_bucket)
    [item] = items({"weights/model.bin": BIG})
    lying = ExportItem(path=item.path, open=item.open, size=item.size, sha256="0" * 64)
    with pytest.raises(BackupError, match="does not match the declared 0000"):
        store.write(REF, [lying], retain_until=RETAIN)
    assert s3_env.client().list_object_versions(Bucket=locked_bucket).get("Versions", []) == []


@pytest.mark.s3
def test_backups_are_write_once(s3_env: MotoServer, locked_bucket: str) -> None:
    when = datetime.now(UTC)
    store = S3BackupStore(s3_env.client(), locked_bucket, part_size=PART, clock=lambda: when)
    store.write(REF, items(), retain_until=RETAIN)
    with pytest.raises(ConflictError, match="backups are write-once"):
        store.write(REF, items(), retain_until=RETAIN)


@pytest.mark.s3
def test_secrets_reach_no_log_manifest_or_error(
    s3_env: MotoServer, locked_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = store_on(locked_bucket)
    manifest = store.write(REF, items(), retain_until=RETAIN, platform_metadata={"note": SECRET_ACCESS_KEY})
    store.verify(manifest.location)
    with pytest.raises(InputError) as info:
        store.verify(f"s3://{locked_bucket}")
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "X-Amz-Security-Token" in logged  # botocore did log its requests...
    written = manifest.model_dump_json() + str(info.value)
    for secret in (SECRET_ACCESS_KEY, SESSION_TOKEN):
        assert secret not in logged  # ... with the credentials scrubbed
        assert secret not in written
    assert ACCESS_KEY_ID not in written


@pytest.mark.s3
def test_retire_backup_create_and_list_use_the_bucket_of_retire_backup_url(
    s3_env: MotoServer,
    locked_bucket: str,
    settings: RetireSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = LocalRegistry(settings.local_dir)  # no gateway: the files are read from disk
    old, _ = registry.seed_demo(total_bytes=64 * 1024)
    monkeypatch.setattr(backup_cli, "get_platform", lambda name, s=None: Platform(name="local", registry=registry))
    monkeypatch.setenv("RETIRE_BACKUP_URL", f"s3://{locked_bucket}/retire/")

    assert main(["backup", "create", "churn-model@1", "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    location = out[0].removeprefix("backup of churn-model@1: ")
    assert location.startswith(f"s3://{locked_bucket}/retire/local/churn-model/1/")
    assert out[2] == f"  verified: 4 files, {sum(r.size for r in registry.file_records(old))} bytes re-read, all match"
    assert main(["backup", "list", "churn-model@1"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(location)


@pytest.mark.s3
def test_restore_from_s3_gives_back_every_byte(
    s3_env: MotoServer, locked_bucket: str, settings: RetireSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = LocalRegistry(settings.local_dir)
    old, new = registry.seed_demo(total_bytes=12 * MIB)
    registry.set_alias(old.name, "production", new.version or "2")
    before = {path: registry.file_path(old, path).read_bytes() for path, _ in registry.files(old)}
    store = store_on(locked_bucket)
    dossier = registry.describe(old)
    location = store.write(old, registry.export(old), retain_until=RETAIN, platform_metadata=dossier.metadata).location
    registry.delete(old)
    assert not registry.exists(old)

    assert main(["backup", "restore", location]) == 0

    assert f"restored churn-model@1 on local from {location}" in capsys.readouterr().out
    assert {path: registry.file_path(old, path).read_bytes() for path, _ in registry.files(old)} == before
    with pytest.raises(ConflictError):  # restore never overwrites
        restore(store, location, registry)


# --- a 1 GiB version, in constant memory ----------------------------------------------------------

SHARDS = 16
SHARD_BYTES = 64 * MIB  # 16 x 64 MiB = 1 GiB; moto's server holds a whole object in memory while it completes it
PEAK_RSS_LIMIT = 100 * 1000 * 1000

# The backup process: what `retire backup create` does (the local platform exports through its gateway, the store
# named by RETIRE_BACKUP_URL writes in one pass, then re-reads to verify), without the command line's other imports.
BACKUP = """
import resource, sys
from datetime import timedelta
from retirement.backup.s3 import S3BackupStore, parse_backup_url
from retirement.models import ModelRef, utcnow
from retirement.platforms import get_platform
from retirement.settings import RetireSettings

settings = RetireSettings()
target = parse_backup_url(settings.backup_url)
store = S3BackupStore.from_settings(target.bucket, target.prefix)
store.require_object_lock()
platform = get_platform("local", settings)
ref = ModelRef.parse(sys.argv[1])
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
manifest = store.write(ref, platform.registry.export(ref), retain_until=utcnow() + timedelta(days=30))
report = store.verify(manifest.location)
platform.close()
print(manifest.location)
print(f"verified {report.ok} {report.files_checked} {report.bytes_checked}")
print(f"rss_kib {baseline} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")
"""

# A small parent that reports its child's peak RSS: a child forked from the pytest process would inherit the
# pytest process's high-water mark in ru_maxrss.
MEASURE = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], timeout=1500)
print("children_maxrss_kib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)
sys.exit(done.returncode)
"""


def _shard(index: int) -> Iterator[bytes]:
    block = random.Random(index).randbytes(MIB)
    for n in range(SHARD_BYTES // MIB):
        yield n.to_bytes(8, "big") + block[8:]


@pytest.mark.s3
@pytest.mark.timeout(1800)
def test_a_1_gib_version_is_backed_up_in_under_100_mb(
    s3_env: MotoServer, locked_bucket: str, settings: RetireSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = LocalRegistry(settings.local_dir)
    ref = ModelRef(name="llm-shards", version="1")
    files = [(f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors", lambda i=i: _shard(i)) for i in range(SHARDS)]
    registry.import_version(ref, [*files, ("config.json", lambda: iter([b'{"layers": 32}']))])
    expected = {r.path: (r.size, r.sha256) for r in registry.file_records(ref)}
    total = sum(size for size, _ in expected.values())
    assert total > 1 << 30
    monkeypatch.setenv("RETIRE_BACKUP_URL", f"s3://{locked_bucket}/retire")
    try:
        with GatewayProcess(settings) as gateway:
            env = {**os.environ, "RETIRE_GATEWAY_PORT": str(gateway.port)}
            command = [sys.executable, "-c", MEASURE, sys.executable, "-c", BACKUP, "llm-shards@1"]
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1600)
    finally:
        shutil.rmtree(settings.local_dir, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    location, verified, rss, children = done.stdout.splitlines()[-4:]
    assert location.startswith(f"s3://{locked_bucket}/retire/local/llm-shards/1/")
    assert verified == f"verified True {SHARDS + 1} {total}"
    baseline = int(rss.split()[1]) * 1024
    peak = int(children.split()[1]) * 1024
    print(f"\n1 GiB to S3, write and verify: peak RSS {peak / 1e6:.1f} MB (before the backup: {baseline / 1e6:.1f} MB)")
    assert peak < PEAK_RSS_LIMIT

    manifest = store_on(locked_bucket).manifest(location)
    assert {f.path: (f.size, f.sha256) for f in manifest.files} == expected
    head = s3_env.client().head_object(Bucket=locked_bucket, Key=key_of(location, files[0][0]))
    assert head["ContentLength"] == SHARD_BYTES and head["ETag"].endswith('-8"')  # 8 parts of 8 MiB

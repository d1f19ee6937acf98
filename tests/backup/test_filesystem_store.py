"""The filesystem backup store on small data: layout, manifest, verify, refusals, nothing left behind."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from retirement.backup import filesystem
from retirement.backup.base import BackupStore
from retirement.backup.filesystem import FilesystemBackupStore
from retirement.backup.stream import http_export_item
from retirement.errors import BackupError, ConflictError, InputError, NotFoundError
from retirement.models import BackupManifest, ExportItem, ModelRef

REF = ModelRef(platform="local", name="churn-model", version="3")
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
RETAIN = T0 + timedelta(days=30)
FILES = {
    "MLmodel": b"flavor: sklearn\n",
    "weights/model.bin": bytes(range(256)) * 300,
    "weights/empty.txt": b"",
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def items(files: dict[str, bytes], *, declare: bool = True) -> list[ExportItem]:
    return [
        ExportItem(
            path=path,
            open=lambda data=data: chunks(data),
            size=len(data) if declare else None,
            sha256=sha(data) if declare else None,
        )
        for path, data in files.items()
    ]


class Clock:
    """Hands out T0, T0+1s, ... (or always the same time when frozen)."""

    def __init__(self, frozen: bool = False) -> None:
        self.now = T0
        self.frozen = frozen

    def __call__(self) -> datetime:
        now = self.now
        if not self.frozen:
            self.now += timedelta(seconds=1)
        return now


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "backups"


@pytest.fixture
def store(root: Path) -> FilesystemBackupStore:
    return FilesystemBackupStore(root, workers=2, fsync=False, clock=Clock())


def everything_under(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir())


def make_writable(folder: Path) -> None:
    for path in folder.rglob("*"):
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_the_store_implements_the_backup_store_port(store: FilesystemBackupStore) -> None:
    assert isinstance(store, BackupStore)


def test_round_trip_writes_files_manifest_and_dossier_and_reads_them_back(
    store: FilesystemBackupStore, root: Path
) -> None:
    seen: list[tuple[int, int | None]] = []
    manifest = store.write(
        REF,
        items(FILES),
        retain_until=RETAIN,
        dossier={"reference": "churn-model@3", "reason": "superseded"},
        captures=["weights", "MLmodel"],
        not_captured=["serving logs"],
        platform_metadata={"framework": "sklearn"},
        progress=lambda done, total: seen.append((done, total)),
    )
    folder = root / "local" / "churn-model" / "3" / "20260102T030405.678901Z"
    assert manifest.location == str(folder)
    assert manifest.source == REF
    assert manifest.retain_until == RETAIN
    assert manifest.captures == ["weights", "MLmodel"]
    assert manifest.not_captured == ["serving logs"]
    assert manifest.platform_metadata == {"framework": "sklearn"}
    assert [(f.path, f.size, f.sha256) for f in manifest.files] == [
        (path, len(data), sha(data)) for path, data in FILES.items()
    ]
    assert BackupManifest.model_validate_json((folder / "manifest.json").read_bytes()) == manifest
    assert json.loads((folder / "dossier.json").read_text())["reason"] == "superseded"
    assert everything_under(root) == sorted(
        f"local/churn-model/3/20260102T030405.678901Z/{p}" for p in [*FILES, "manifest.json", "dossier.json"]
    )
    for path, data in FILES.items():
        assert (folder / path).read_bytes() == data
        assert not (folder / path).stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        with store.open(str(folder), path) as handle:
            assert handle.read() == data
    total = sum(len(d) for d in FILES.values())
    assert seen[-1] == (total, total)
    report = store.verify(str(folder))
    assert report.ok and report.mismatches == []
    assert (report.files_checked, report.bytes_checked) == (3, total)
    assert [m.location for m in store.list(REF)] == [str(folder)]


def test_progress_is_reported_at_least_every_progress_step(
    store: FilesystemBackupStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filesystem, "PROGRESS_EVERY", 4096)
    data = os.urandom(50_000)
    seen: list[tuple[int, int | None]] = []
    store.write(
        REF, items({"big.bin": data}, declare=False), retain_until=RETAIN, progress=lambda d, t: seen.append((d, t))
    )
    dones = [0] + [d for d, _ in seen]
    assert all(b - a <= 4096 + 1000 for a, b in itertools.pairwise(dones))
    assert seen[-1] == (50_000, None)


def test_a_download_through_the_engine_with_a_dropped_connection_is_stored_exactly(
    store: FilesystemBackupStore,
) -> None:
    data = os.urandom(10_000)
    calls = {"n": 0}

    def app(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        start = int(request.headers.get("range", "bytes=0-")[6:-1])

        def body() -> Iterator[bytes]:
            yield data[start : start + 4000]
            if calls["n"] == 1:
                raise httpx.ReadError("reset")
            yield data[start + 4000 :]

        if start:
            return httpx.Response(
                206, headers={"content-range": f"bytes {start}-{len(data) - 1}/{len(data)}"}, content=body()
            )
        return httpx.Response(200, content=body())

    with httpx.Client(transport=httpx.MockTransport(app), base_url="http://registry.test") as client:
        item = http_export_item(
            client, "model.bin", "/f", platform="test", size=len(data), sha256=sha(data), chunk_size=1000
        )
        manifest = store.write(REF, [item], retain_until=RETAIN)
    assert calls["n"] == 2
    assert manifest.files[0].sha256 == sha(data)
    assert (Path(manifest.location) / "model.bin").read_bytes() == data


def test_verify_names_every_flipped_byte_truncation_missing_and_extra_file(
    store: FilesystemBackupStore,
) -> None:
    files = {"a.bin": os.urandom(3000), "b.bin": os.urandom(3000), "c/d.bin": os.urandom(100), "e.bin": b"keep"}
    folder = Path(store.write(REF, items(files), retain_until=RETAIN).location)
    make_writable(folder)
    flipped = bytearray(files["a.bin"])
    flipped[1234] ^= 0x01
    (folder / "a.bin").write_bytes(bytes(flipped))
    (folder / "b.bin").write_bytes(files["b.bin"][:2999])
    (folder / "c" / "d.bin").unlink()
    (folder / "c" / "stowaway.bin").write_bytes(b"not in the manifest")

    report = store.verify(str(folder))

    assert not report.ok
    assert len(report.mismatches) == 4
    by_path = {line.split(":")[0]: line for line in report.mismatches}
    assert "sha256 differs" in by_path["a.bin"]
    assert "size differs" in by_path["b.bin"] and "3000" in by_path["b.bin"] and "2999" in by_path["b.bin"]
    assert "missing" in by_path["c/d.bin"]
    assert "extra file" in by_path["c/stowaway.bin"]


def test_a_file_replaced_by_a_link_is_reported_and_not_followed(store: FilesystemBackupStore, tmp_path: Path) -> None:
    folder = Path(store.write(REF, items({"a.bin": b"abc"}), retain_until=RETAIN).location)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"abc")
    make_writable(folder)
    (folder / "a.bin").unlink()
    (folder / "a.bin").symlink_to(outside)
    report = store.verify(str(folder))
    assert not report.ok
    assert report.mismatches[0].startswith("a.bin: cannot be read")


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"size": 5}, "declared 5"),
        ({"size": 99}, "declared 99"),
        ({"sha256": "0" * 64}, "does not match the declared"),
    ],
)
def test_a_declared_size_or_hash_mismatch_is_refused_and_nothing_is_kept(
    store: FilesystemBackupStore, root: Path, declared: dict[str, object], message: str
) -> None:
    good = ExportItem(path="ok.bin", open=lambda: chunks(b"fine" * 100), size=400)
    bad = ExportItem(path="weights/bad.bin", open=lambda: chunks(b"x" * 50, 7), **declared)  # type: ignore[arg-type]
    with pytest.raises(BackupError, match=message) as info:
        store.write(REF, [good, bad], retain_until=RETAIN)
    assert "weights/bad.bin" in str(info.value)
    assert everything_under(root) == []
    assert store.list() == []


def test_a_failing_stream_removes_the_partial_backup_and_names_the_file(
    store: FilesystemBackupStore, root: Path
) -> None:
    def broken() -> Iterator[bytes]:
        yield b"some bytes"
        raise OSError("disk on fire")

    with pytest.raises(BackupError, match=r"^weights/broken.bin: OSError: disk on fire"):
        store.write(REF, [*items(FILES), ExportItem(path="weights/broken.bin", open=broken)], retain_until=RETAIN)
    assert everything_under(root) == []


@pytest.mark.parametrize(
    "ref",
    [
        ModelRef(platform="local", name="../../escape", version="1"),
        ModelRef(platform="../..", name="a/../../b"),
        ModelRef(platform="lo\x00cal/..", name="org/model", version="1.0"),
    ],
)
def test_model_names_with_slashes_dots_or_nul_stay_inside_the_root(
    store: FilesystemBackupStore, root: Path, tmp_path: Path, ref: ModelRef
) -> None:
    manifest = store.write(ref, items({"f.bin": b"data"}), retain_until=RETAIN)
    folder = Path(manifest.location)
    assert folder.resolve().is_relative_to(root.resolve())
    assert len(folder.relative_to(root).parts) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backups"]
    assert [m.source for m in store.list(ref)] == [ref]
    assert store.verify(str(folder)).ok


@pytest.mark.parametrize(
    "ref",
    [ModelRef(name=".."), ModelRef(name="."), ModelRef(platform="..", name="m"), ModelRef(platform="", name="m")],
)
def test_dot_and_empty_location_names_are_refused(store: FilesystemBackupStore, root: Path, ref: ModelRef) -> None:
    with pytest.raises(InputError):
        store.write(ref, items({"f.bin": b"data"}), retain_until=RETAIN)
    assert everything_under(root) == []


@pytest.mark.parametrize(
    "path",
    ["../evil.bin", "/etc/evil.bin", "a/../../evil.bin", "a/./b", "a//b", "a\x00b", "a\\..\\b", "manifest.json", ""],
)
def test_file_paths_that_could_leave_the_backup_are_refused_before_anything_is_written(
    store: FilesystemBackupStore, tmp_path: Path, path: str
) -> None:
    with pytest.raises(InputError, match="file path"):
        store.write(
            REF, [*items({"ok.bin": b"ok"}), ExportItem(path=path, open=lambda: iter([b"x"]))], retain_until=RETAIN
        )
    assert everything_under(tmp_path) == []


def test_a_path_that_is_both_a_file_and_a_folder_is_refused(store: FilesystemBackupStore) -> None:
    with pytest.raises(InputError, match="both a file and a folder"):
        store.write(REF, items({"a": b"1", "a/b": b"2"}), retain_until=RETAIN)


def test_a_second_write_to_the_same_location_is_refused_and_the_first_is_untouched(root: Path) -> None:
    store = FilesystemBackupStore(root, fsync=False, clock=Clock(frozen=True))
    first = store.write(REF, items(FILES), retain_until=RETAIN)
    with pytest.raises(ConflictError, match="write-once"):
        store.write(REF, items({"MLmodel": b"other"}), retain_until=RETAIN)
    assert store.verify(first.location).ok
    assert (Path(first.location) / "MLmodel").read_bytes() == FILES["MLmodel"]
    assert len(store.list()) == 1


def test_list_is_newest_first_and_filters_by_model_and_version(store: FilesystemBackupStore) -> None:
    v3a = store.write(REF, items(FILES), retain_until=RETAIN)
    v4 = store.write(REF.model_copy(update={"version": "4"}), items(FILES), retain_until=RETAIN)
    other = store.write(ModelRef(name="fraud-model", version="1"), items(FILES), retain_until=RETAIN)
    v3b = store.write(REF, items(FILES), retain_until=RETAIN)
    assert [m.location for m in store.list(REF)] == [v3b.location, v3a.location]
    assert [m.location for m in store.list(REF.model)] == [v3b.location, v4.location, v3a.location]
    assert [m.location for m in store.list()] == [v3b.location, other.location, v4.location, v3a.location]


def test_a_location_that_is_not_a_backup_is_not_found(store: FilesystemBackupStore, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        store.verify(str(tmp_path))
    with pytest.raises(NotFoundError):
        store.verify(str(tmp_path / "nowhere"))


def test_open_refuses_files_outside_the_manifest(store: FilesystemBackupStore) -> None:
    location = store.write(REF, items(FILES), retain_until=RETAIN).location
    with pytest.raises(NotFoundError):
        store.open(location, "weights/other.bin")
    with pytest.raises(InputError):
        store.open(location, "../../../etc/passwd")
    with store.open(location, "manifest.json") as handle:
        assert json.loads(handle.read())["location"] == location


def test_secrets_never_reach_the_manifest_the_dossier_or_the_error(store: FilesystemBackupStore, root: Path) -> None:
    secret = "sk-live0123456789abcdef"
    manifest = store.write(
        REF,
        items({"a.bin": b"a"}),
        retain_until=RETAIN,
        platform_metadata={"framework": "sklearn", "api_key": secret},
        dossier={"notes": f"deployed with {secret}", "reference": "churn-model@3"},
    )
    folder = Path(manifest.location)
    assert manifest.platform_metadata["framework"] == "sklearn"
    for name in ("manifest.json", "dossier.json"):
        text = (folder / name).read_text()
        assert secret not in text
        assert "churn-model" in text

    def leaky() -> Iterator[bytes]:
        raise RuntimeError(f"GET https://bucket.test/w.bin?X-Amz-Signature={secret} failed")

    with pytest.raises(BackupError) as info:
        store.write(REF, [ExportItem(path="w.bin", open=leaky)], retain_until=RETAIN)
    assert secret not in str(info.value)
    assert "https://bucket.test/w.bin" in str(info.value)

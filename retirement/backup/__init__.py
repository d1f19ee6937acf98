"""Backups: the streaming download engine, the filesystem store, and restore."""

from __future__ import annotations

from retirement.backup.base import BackupStore, ProgressCallback
from retirement.backup.filesystem import FilesystemBackupStore, check_item_path
from retirement.backup.restore import VersionImporter, restore
from retirement.backup.stream import CHUNK_SIZE, http_export_item, iter_download, safe_url

__all__ = [
    "CHUNK_SIZE",
    "BackupStore",
    "FilesystemBackupStore",
    "ProgressCallback",
    "VersionImporter",
    "check_item_path",
    "http_export_item",
    "iter_download",
    "restore",
    "safe_url",
]

"""Backups: the streaming download engine, the filesystem and S3 stores, restore and purge."""

from __future__ import annotations

from retirement.backup.base import BackupStore, ProgressCallback
from retirement.backup.filesystem import FilesystemBackupStore, check_item_path
from retirement.backup.restore import RestorableStore, VersionImporter, purge, restore
from retirement.backup.s3 import S3BackupStore, parse_backup_url
from retirement.backup.stream import CHUNK_SIZE, http_export_item, iter_download, safe_url

__all__ = [
    "CHUNK_SIZE",
    "BackupStore",
    "FilesystemBackupStore",
    "ProgressCallback",
    "RestorableStore",
    "S3BackupStore",
    "VersionImporter",
    "check_item_path",
    "http_export_item",
    "iter_download",
    "parse_backup_url",
    "purge",
    "restore",
    "safe_url",
]

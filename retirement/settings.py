"""Settings of the library, from RETIRE_* environment variables (one class per concern)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path("~/.model-retirement")


class RetireSettings(BaseSettings):
    """Where the library keeps its files, and the limits no run parameter can lower."""

    model_config = SettingsConfigDict(env_prefix="RETIRE_", extra="ignore")

    home: Path = Field(
        default=DEFAULT_HOME,
        description="Root of everything kept on this machine: local platform, backups, ledger, state.",
    )
    local_root: Path | None = Field(
        default=None, description="Root of the embedded local platform (default: <home>/local)."
    )
    backup_root: Path | None = Field(
        default=None, description="Root of the filesystem backup store (default: <home>/backups)."
    )
    backup_url: str | None = Field(
        default=None,
        description="Where backups are kept: s3://BUCKET[/PREFIX] (S3-compatible object storage; the bucket must "
        "have Object Lock enabled; needs the `s3` extra) or file:///ABSOLUTE/PATH. Unset: the filesystem store "
        "under backup_root (<home>/backups).",
    )
    ledger_path: Path | None = Field(
        default=None,
        description="A ledger kept as JSON lines before the database; imported once into it, then renamed "
        "(default: <home>/ledger.jsonl).",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="The database of retirement states, claims and the ledger: a SQLAlchemy URL. Unset: SQLite at "
        "<home>/retire.db (one machine). Many workers on many machines: postgresql://USER:PASSWORD@HOST:PORT/DB "
        "(it can be the server Prefect uses).",
    )
    gateway_host: str = Field(default="127.0.0.1", description="Address the local gateway binds to.")
    gateway_port: int = Field(default=8765, ge=1, le=65535, description="Port of the local gateway.")
    min_traffic_window_hours: float = Field(
        default=24.0,
        ge=0,
        description="The shortest traffic window a run may ask for (hours). Only the operator lowers it "
        "(e.g. 0 on a demo machine); a run parameter cannot.",
    )
    cutover_grace_seconds: float = Field(
        default=60,
        ge=0,
        le=3600,
        description="The traffic window starts this long after the cutover, so requests in flight at the switch "
        "and a traffic source's sampling step (a Prometheus scrape) do not count against the old model.",
    )
    gate_poll_seconds: int = Field(
        default=5,
        ge=1,
        le=60,
        description="How often a run paused at a gate (outside a deployment) checks for an answer.",
    )
    ledger_signing_key: SecretStr | None = Field(
        default=None,
        description="Ed25519 private key (base64, `retire ledger keygen`) that signs the ledger's checkpoints; keep it "
        "in the workers' secret store, never beside the ledger.",
    )
    ledger_verify_key: str | None = Field(
        default=None,
        description="The matching public key (base64): `retire ledger verify` then requires every checkpoint signed.",
    )
    ledger_checkpoint_dir: Path | None = Field(
        default=None,
        description="Where the ledger's checkpoints are appended, outside the database (default: "
        "<home>/ledger-checkpoints; a folder the database's writers cannot rewrite).",
    )
    zombie_after_seconds: int = Field(
        default=90,
        ge=45,
        le=3600,
        description="A retirement run that sent no heartbeat for this long is marked Crashed and resumed by the "
        "reconciler (runs beat every 30 s).",
    )
    min_backup_retention_days: int = Field(
        default=30, ge=0, description="The shortest backup retention a run may ask for (days)."
    )

    def _under_home(self, value: Path | None, name: str) -> Path:
        return (value or self.home.expanduser() / name).expanduser()

    @property
    def local_dir(self) -> Path:
        """The local platform's root."""
        return self._under_home(self.local_root, "local")

    @property
    def backup_dir(self) -> Path:
        """The backup store's root."""
        return self._under_home(self.backup_root, "backups")

    @property
    def ledger_file(self) -> Path:
        """The audit ledger's path."""
        return (self.ledger_path or self.home.expanduser() / "ledger.jsonl").expanduser()

    @property
    def database(self) -> str:
        """The database URL in force (with its password; never log it: use retirement.db.safe_url)."""
        if self.database_url is not None and self.database_url.get_secret_value():
            return self.database_url.get_secret_value()
        return f"sqlite:///{self.home.expanduser() / 'retire.db'}"

    @property
    def checkpoint_dir(self) -> Path:
        """Where the ledger's checkpoints are kept."""
        return self._under_home(self.ledger_checkpoint_dir, "ledger-checkpoints")

    @property
    def state_dir(self) -> Path:
        """Where retirement states were kept as files before the database (imported once)."""
        return self.home.expanduser() / "retirements"

    @property
    def gateway_url(self) -> str:
        """Base URL of the local gateway."""
        return f"http://{self.gateway_host}:{self.gateway_port}"


class S3BackupSettings(BaseSettings):
    """How to reach the bucket of RETIRE_BACKUP_URL=s3://...: the usual AWS variables, and how backups are locked."""

    model_config = SettingsConfigDict(env_prefix="RETIRE_BACKUP_S3_", extra="ignore")

    endpoint_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("RETIRE_BACKUP_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        description="Endpoint of an S3-compatible service (MinIO, Ceph, a cloud's S3 API); unset: AWS S3.",
    )
    region: str | None = Field(
        default=None,
        validation_alias=AliasChoices("RETIRE_BACKUP_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
        description="Region of the bucket; unset: boto3's own default (its config file).",
    )
    access_key_id: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("AWS_ACCESS_KEY_ID"),
        description="Access key id; unset: boto3's credential chain (profile, instance or task role).",
    )
    secret_access_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY"), description="Secret access key."
    )
    session_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("AWS_SESSION_TOKEN"),
        description="Session token of temporary credentials.",
    )
    lock_mode: Literal["COMPLIANCE", "GOVERNANCE"] = Field(
        default="COMPLIANCE",
        validation_alias=AliasChoices("RETIRE_BACKUP_S3_LOCK_MODE"),
        description="S3 Object Lock mode every backup object is written under until its retain-until date. "
        "COMPLIANCE: no one, not even the account root, can delete or shorten it early; GOVERNANCE: only "
        "someone with s3:BypassGovernanceRetention can.",
    )
    part_size_mib: int = Field(
        default=8,
        ge=5,
        le=512,
        validation_alias=AliasChoices("RETIRE_BACKUP_S3_PART_SIZE_MIB"),
        description="Size of one part of a multipart upload (MiB); each upload worker holds one part in memory.",
    )

    @field_validator("endpoint_url", "region", "access_key_id", "secret_access_key", "session_token", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # An exported-but-empty variable means "not configured", not "an empty key".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("lock_mode", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

"""Settings, read once from ``CORPORA_*`` environment variables into a frozen object."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

DownloadMode = Literal["presigned", "proxy"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(ValueError):
    """A setting has a value the service cannot run with."""


def _bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, not {value!r}")


def _int(value: str, name: str, *, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, not {value!r}") from None
    if not low <= number <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, not {number}")
    return number


def _networks(value: str, name: str) -> tuple[IPNetwork, ...]:
    try:
        return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip())
    except ValueError as exc:
        raise SettingsError(f"{name} must list IP addresses or networks (10.0.0.0/8,::1): {exc}") from None


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service is configured with. ``None`` for database or S3 means "embedded"."""

    database_url: str | None = None
    # A read replica for read-only endpoints (catalogue search); used while it lags the primary by at most
    # database_read_max_lag_seconds, else those reads go to the primary.
    database_read_url: str | None = None
    database_read_max_lag_seconds: int = 5
    s3_endpoint: str | None = None
    s3_access_key: str = "corpora"
    s3_secret_key: str = "corpora-dev-secret-key"  # noqa: S105 - embedded development default only
    s3_bucket: str = "corpora"
    s3_region: str = "us-east-1"
    s3_secure: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    data_dir: Path = Path("var")
    signup_open: bool = True
    review_required: bool = True
    # A version is approved only once a sample review of it passed.
    review_requires_sample: bool = False
    download_mode: DownloadMode = "presigned"
    presign_ttl_seconds: int = 300
    # Ed25519 PEM files; the first signs, all verify (rotation by ``kid``). Empty: generated in data_dir.
    signing_key_files: tuple[Path, ...] = ()
    jwt_issuer: str = "corpora"
    jwt_audience: str = "corpora-api"
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    login_max_failures: int = 5
    login_window_seconds: int = 900
    # Sign-ups from one client address per window; Argon2 hashes computed at once per process (64 MiB each).
    signup_max_per_address: int = 20
    signup_window_seconds: int = 3600
    password_hash_concurrency: int = 4
    max_body_bytes: int = 1024 * 1024
    audit_checkpoint_every_events: int = 1000
    audit_checkpoint_every_seconds: int = 60
    # Every server process and job worker sequences committed audit events into the log this often (at most one at
    # a time; app/audit/sequencer.py); 0: this process never does (then another must).
    audit_sequence_every_ms: int = 50
    # Checkpoints are stored under object-lock COMPLIANCE retention for this long: nobody, the holder of the
    # store's keys included, can delete or shorten them before then (0: no retention, for buckets without
    # object lock).
    audit_retention_days: int = 3650
    db_pool_size: int = 10
    # Keys the pseudonyms that stand for buyers' members in a provider's view of the audit trail
    # (app/audit/redaction.py); unset: derived from the oldest signing key.
    audit_pseudonym_secret: str | None = None
    # HMAC-SHA256 secret shared with the payment provider; unset disables the payment webhook.
    payment_webhook_secret: str | None = None
    # The storage janitor (catalog/janitor.py): uploads unfinished this long after their plan are abandoned,
    # and unreferenced objects this old are deleted; it runs in every server process this often (0: never).
    janitor_max_age_seconds: int = 24 * 3600
    janitor_every_seconds: int = 3600
    # Reverse proxies (addresses or CIDR networks) whose X-Forwarded-For names the client; empty: the TCP peer
    # is the client, and X-Forwarded-For is ignored.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    # Outbound requests to user-given URLs (webhooks, opt-out evidence) may reach private, loopback and
    # link-local addresses: for development and tests only (app/egress.py).
    egress_allow_private: bool = False
    # Hostile and slow clients (app/client_guard.py): a request's headers must arrive within
    # header_timeout_seconds and its body within body_timeout_seconds; each server worker keeps at most
    # max_connections connections and reads at most max_pending_bodies bodies at once (beyond: 503).
    header_timeout_seconds: int = 10
    body_timeout_seconds: int = 15
    max_connections: int = 2048
    max_pending_bodies: int = 512
    # Deadlines on dependencies: a hung PostgreSQL or object store is a 503 within seconds.
    db_connect_timeout_seconds: int = 3
    db_statement_timeout_seconds: int = 4
    db_pool_timeout_seconds: int = 3
    s3_timeout_seconds: int = 5
    # Proxied downloads wait this long for the object store's next bytes before giving up.
    s3_stream_timeout_seconds: int = 60
    # One JSON line per request on the ``corpora.access`` logger.
    access_log: bool = True
    # Bearer token that /metrics requires; unset: /metrics answers 404 unless metrics_public.
    metrics_token: str | None = None
    metrics_public: bool = False

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def embedded_object_store(self) -> bool:
        return self.s3_endpoint is None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        defaults = cls()

        def get(name: str) -> str | None:
            value = env.get(f"CORPORA_{name}")
            return value if value not in (None, "") else None

        values: dict[str, object] = {}
        if (url := get("DATABASE_URL")) is not None:
            values["database_url"] = url
        if (read_url := get("DATABASE_READ_URL")) is not None:
            values["database_read_url"] = read_url
        if (endpoint := get("S3_ENDPOINT")) is not None:
            values["s3_endpoint"] = endpoint
        for name, field in [
            ("S3_ACCESS_KEY", "s3_access_key"),
            ("S3_SECRET_KEY", "s3_secret_key"),
            ("S3_BUCKET", "s3_bucket"),
            ("S3_REGION", "s3_region"),
            ("HOST", "host"),
            ("JWT_ISSUER", "jwt_issuer"),
            ("JWT_AUDIENCE", "jwt_audience"),
            ("PAYMENT_WEBHOOK_SECRET", "payment_webhook_secret"),
            ("METRICS_TOKEN", "metrics_token"),
            ("AUDIT_PSEUDONYM_SECRET", "audit_pseudonym_secret"),
        ]:
            if (raw := get(name)) is not None:
                values[field] = raw
        for name, field in [
            ("S3_SECURE", "s3_secure"),
            ("SIGNUP_OPEN", "signup_open"),
            ("REVIEW_REQUIRED", "review_required"),
            ("REVIEW_REQUIRES_SAMPLE", "review_requires_sample"),
            ("EGRESS_ALLOW_PRIVATE", "egress_allow_private"),
            ("ACCESS_LOG", "access_log"),
            ("METRICS_PUBLIC", "metrics_public"),
        ]:
            if (raw := get(name)) is not None:
                values[field] = _bool(raw, f"CORPORA_{name}")
        for name, field, low, high in [
            ("PORT", "port", 1, 65535),
            ("WORKERS", "workers", 1, 64),
            ("PRESIGN_TTL_SECONDS", "presign_ttl_seconds", 1, 3600),
            ("ACCESS_TOKEN_TTL_SECONDS", "access_token_ttl_seconds", 30, 3600),
            ("REFRESH_TOKEN_TTL_SECONDS", "refresh_token_ttl_seconds", 60, 365 * 24 * 3600),
            ("LOGIN_MAX_FAILURES", "login_max_failures", 1, 1000),
            ("LOGIN_WINDOW_SECONDS", "login_window_seconds", 1, 24 * 3600),
            ("SIGNUP_MAX_PER_ADDRESS", "signup_max_per_address", 1, 1_000_000),
            ("SIGNUP_WINDOW_SECONDS", "signup_window_seconds", 1, 7 * 24 * 3600),
            ("PASSWORD_HASH_CONCURRENCY", "password_hash_concurrency", 1, 256),
            ("MAX_BODY_BYTES", "max_body_bytes", 1024, 64 * 1024 * 1024),
            ("AUDIT_CHECKPOINT_EVERY_EVENTS", "audit_checkpoint_every_events", 1, 10_000_000),
            ("AUDIT_CHECKPOINT_EVERY_SECONDS", "audit_checkpoint_every_seconds", 1, 24 * 3600),
            ("AUDIT_RETENTION_DAYS", "audit_retention_days", 0, 36500),
            ("AUDIT_SEQUENCE_EVERY_MS", "audit_sequence_every_ms", 0, 10_000),
            ("DB_POOL_SIZE", "db_pool_size", 1, 200),
            ("DATABASE_READ_MAX_LAG_SECONDS", "database_read_max_lag_seconds", 2, 3600),
            ("JANITOR_MAX_AGE_SECONDS", "janitor_max_age_seconds", 60, 365 * 24 * 3600),
            ("JANITOR_EVERY_SECONDS", "janitor_every_seconds", 0, 7 * 24 * 3600),
            ("HEADER_TIMEOUT_SECONDS", "header_timeout_seconds", 1, 60),
            ("BODY_TIMEOUT_SECONDS", "body_timeout_seconds", 1, 3600),
            ("MAX_CONNECTIONS", "max_connections", 16, 65536),
            ("MAX_PENDING_BODIES", "max_pending_bodies", 1, 65536),
            ("DB_CONNECT_TIMEOUT_SECONDS", "db_connect_timeout_seconds", 1, 60),
            ("DB_STATEMENT_TIMEOUT_SECONDS", "db_statement_timeout_seconds", 1, 3600),
            ("DB_POOL_TIMEOUT_SECONDS", "db_pool_timeout_seconds", 1, 60),
            ("S3_TIMEOUT_SECONDS", "s3_timeout_seconds", 1, 600),
            ("S3_STREAM_TIMEOUT_SECONDS", "s3_stream_timeout_seconds", 1, 3600),
        ]:
            if (raw := get(name)) is not None:
                values[field] = _int(raw, f"CORPORA_{name}", low=low, high=high)
        if (raw := get("DATA_DIR")) is not None:
            values["data_dir"] = Path(raw)
        if (raw := get("DOWNLOAD_MODE")) is not None:
            if raw not in ("presigned", "proxy"):
                raise SettingsError(f"CORPORA_DOWNLOAD_MODE must be presigned or proxy, not {raw!r}")
            values["download_mode"] = raw
        if (raw := get("SIGNING_KEY_FILES")) is not None:
            values["signing_key_files"] = tuple(Path(p) for p in raw.split(",") if p.strip())
        if (raw := get("TRUSTED_PROXIES")) is not None:
            values["trusted_proxies"] = _networks(raw, "CORPORA_TRUSTED_PROXIES")
        return dataclasses.replace(defaults, **values)  # type: ignore[arg-type]

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in another process (server workers)."""
        env = {
            "CORPORA_S3_ACCESS_KEY": self.s3_access_key,
            "CORPORA_S3_SECRET_KEY": self.s3_secret_key,
            "CORPORA_S3_BUCKET": self.s3_bucket,
            "CORPORA_S3_REGION": self.s3_region,
            "CORPORA_S3_SECURE": str(self.s3_secure).lower(),
            "CORPORA_HOST": self.host,
            "CORPORA_PORT": str(self.port),
            "CORPORA_WORKERS": str(self.workers),
            "CORPORA_DATA_DIR": str(self.data_dir),
            "CORPORA_SIGNUP_OPEN": str(self.signup_open).lower(),
            "CORPORA_REVIEW_REQUIRED": str(self.review_required).lower(),
            "CORPORA_REVIEW_REQUIRES_SAMPLE": str(self.review_requires_sample).lower(),
            "CORPORA_DOWNLOAD_MODE": self.download_mode,
            "CORPORA_PRESIGN_TTL_SECONDS": str(self.presign_ttl_seconds),
            "CORPORA_JWT_ISSUER": self.jwt_issuer,
            "CORPORA_JWT_AUDIENCE": self.jwt_audience,
            "CORPORA_ACCESS_TOKEN_TTL_SECONDS": str(self.access_token_ttl_seconds),
            "CORPORA_REFRESH_TOKEN_TTL_SECONDS": str(self.refresh_token_ttl_seconds),
            "CORPORA_LOGIN_MAX_FAILURES": str(self.login_max_failures),
            "CORPORA_LOGIN_WINDOW_SECONDS": str(self.login_window_seconds),
            "CORPORA_SIGNUP_MAX_PER_ADDRESS": str(self.signup_max_per_address),
            "CORPORA_SIGNUP_WINDOW_SECONDS": str(self.signup_window_seconds),
            "CORPORA_PASSWORD_HASH_CONCURRENCY": str(self.password_hash_concurrency),
            "CORPORA_MAX_BODY_BYTES": str(self.max_body_bytes),
            "CORPORA_AUDIT_CHECKPOINT_EVERY_EVENTS": str(self.audit_checkpoint_every_events),
            "CORPORA_AUDIT_CHECKPOINT_EVERY_SECONDS": str(self.audit_checkpoint_every_seconds),
            "CORPORA_AUDIT_RETENTION_DAYS": str(self.audit_retention_days),
            "CORPORA_AUDIT_SEQUENCE_EVERY_MS": str(self.audit_sequence_every_ms),
            "CORPORA_DB_POOL_SIZE": str(self.db_pool_size),
            "CORPORA_DATABASE_READ_MAX_LAG_SECONDS": str(self.database_read_max_lag_seconds),
            "CORPORA_JANITOR_MAX_AGE_SECONDS": str(self.janitor_max_age_seconds),
            "CORPORA_JANITOR_EVERY_SECONDS": str(self.janitor_every_seconds),
            "CORPORA_EGRESS_ALLOW_PRIVATE": str(self.egress_allow_private).lower(),
            "CORPORA_HEADER_TIMEOUT_SECONDS": str(self.header_timeout_seconds),
            "CORPORA_BODY_TIMEOUT_SECONDS": str(self.body_timeout_seconds),
            "CORPORA_MAX_CONNECTIONS": str(self.max_connections),
            "CORPORA_MAX_PENDING_BODIES": str(self.max_pending_bodies),
            "CORPORA_DB_CONNECT_TIMEOUT_SECONDS": str(self.db_connect_timeout_seconds),
            "CORPORA_DB_STATEMENT_TIMEOUT_SECONDS": str(self.db_statement_timeout_seconds),
            "CORPORA_DB_POOL_TIMEOUT_SECONDS": str(self.db_pool_timeout_seconds),
            "CORPORA_S3_TIMEOUT_SECONDS": str(self.s3_timeout_seconds),
            "CORPORA_S3_STREAM_TIMEOUT_SECONDS": str(self.s3_stream_timeout_seconds),
            "CORPORA_ACCESS_LOG": str(self.access_log).lower(),
            "CORPORA_METRICS_PUBLIC": str(self.metrics_public).lower(),
        }
        if self.database_url is not None:
            env["CORPORA_DATABASE_URL"] = self.database_url
        if self.database_read_url is not None:
            env["CORPORA_DATABASE_READ_URL"] = self.database_read_url
        if self.s3_endpoint is not None:
            env["CORPORA_S3_ENDPOINT"] = self.s3_endpoint
        if self.payment_webhook_secret is not None:
            env["CORPORA_PAYMENT_WEBHOOK_SECRET"] = self.payment_webhook_secret
        if self.signing_key_files:
            env["CORPORA_SIGNING_KEY_FILES"] = ",".join(str(p) for p in self.signing_key_files)
        if self.metrics_token is not None:
            env["CORPORA_METRICS_TOKEN"] = self.metrics_token
        if self.audit_pseudonym_secret is not None:
            env["CORPORA_AUDIT_PSEUDONYM_SECRET"] = self.audit_pseudonym_secret
        if self.trusted_proxies:
            env["CORPORA_TRUSTED_PROXIES"] = ",".join(str(n) for n in self.trusted_proxies)
        return env

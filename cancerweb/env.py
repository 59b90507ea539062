"""Reading the environment for settings: every reader refuses a malformed value with
ImproperlyConfigured naming the variable, so a bad configuration stops start-up.
No app imports: settings must load before any app."""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets

from django.core.exceptions import ImproperlyConfigured

KEY_BYTES = 32  # AES-256
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0, maximum: float = float("inf")) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from exc
    if not minimum <= value <= maximum:  # also refuses NaN
        raise ImproperlyConfigured(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_rate(name: str, default: str) -> str:
    value = os.environ.get(name) or default
    count, _, period = value.partition("/")
    if not count.isdigit() or int(count) < 1 or period not in {"second", "minute", "hour", "day"}:
        raise ImproperlyConfigured(f"{name} must look like 120/minute (per second, minute, hour or day), got {value!r}")
    return value


def parse_key_entries(raw: str) -> tuple[tuple[str, bytes], ...]:
    """Parse ``id:base64key,id:base64key`` (first is current). Raises ValueError naming the problem."""
    entries = [item.strip() for item in raw.split(",") if item.strip()]
    if not entries:
        raise ValueError("no keys given")
    keys: list[tuple[str, bytes]] = []
    for position, entry in enumerate(entries, start=1):
        key_id, sep, encoded = entry.partition(":")
        if not sep:
            raise ValueError(f"key {position} must be written as id:base64key")
        if not KEY_ID_PATTERN.match(key_id):
            raise ValueError(f"key {position} has an invalid id (letters, digits, . _ -, up to 32)")
        try:
            key = base64.b64decode(encoded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"key {key_id!r} is not valid base64") from exc
        if len(key) != KEY_BYTES:
            raise ValueError(f"key {key_id!r} decodes to {len(key)} bytes; AES-256 needs {KEY_BYTES}")
        if any(kid == key_id for kid, _ in keys):
            raise ValueError(f"key id {key_id!r} appears twice")
        keys.append((key_id, key))
    return tuple(keys)


def generate_key_entry(key_id: str) -> str:
    """A new ``id:base64key`` entry for CANCERWEB_ENCRYPTION_KEYS."""
    if not KEY_ID_PATTERN.match(key_id):
        raise ValueError("invalid key id")
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def env_storage_url(name: str) -> tuple[str, str, str]:
    """Where stored objects live: ``("local", "", "")`` when the variable is empty (the
    folder CANCERWEB_SCAN_DIR), or ``("s3", bucket, prefix)`` for ``s3://bucket/prefix``."""
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return ("local", "", "")
    scheme, sep, rest = raw.partition("://")
    if not sep or scheme != "s3":
        raise ImproperlyConfigured(f"{name} must be empty (the local folder) or s3://bucket[/prefix], got {raw!r}")
    bucket, _, prefix = rest.partition("/")
    # S3's bucket naming rules: 3-63 characters, lower-case letters, digits, dots and dashes.
    if not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", bucket):
        raise ImproperlyConfigured(f"{name} names an invalid bucket {bucket!r} (3-63 lower-case letters, digits, . -)")
    prefix = prefix.strip("/")
    if prefix and not re.match(r"^[A-Za-z0-9._/-]+$", prefix):
        raise ImproperlyConfigured(f"{name} has an invalid prefix {prefix!r} (letters, digits, . _ - /)")
    return ("s3", bucket, prefix)


def s3_storage_backend(
    *,
    bucket: str,
    location: str,
    endpoint_url: str = "",
    region: str = "us-east-1",
    access_key: str = "",
    secret_key: str = "",
    connect_timeout: int = 3,
) -> dict[str, object]:
    """A STORAGES entry for django-storages' S3 backend (settings and tests share it)."""
    from botocore.config import Config

    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "location": location,
            "endpoint_url": endpoint_url or None,
            "region_name": region,
            "access_key": access_key or None,
            "secret_key": secret_key or None,
            # A store that is down must fail a request within seconds (503), not hang
            # it: a short connect timeout and few retries. Path-style addressing for
            # self-hosted stores (SeaweedFS, MinIO, Ceph) without per-bucket host names.
            "client_config": Config(
                s3={"addressing_style": "path" if endpoint_url else "auto"},
                signature_version="s3v4",
                connect_timeout=connect_timeout,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
            # Content-addressed names: the same name always holds the same plaintext, so
            # a second writer's PUT replaces an equal object, and an S3 PUT is atomic (a
            # reader sees the old or the new object, never a mix).
            "file_overwrite": True,
            "default_acl": None,
            "querystring_auth": True,
        },
    }

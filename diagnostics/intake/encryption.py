"""Authenticated encryption of stored objects (AES-256-GCM). No Django imports:
settings parse the key ring at start-up (cancerweb/env.py) and storage passes it in.

A stored blob is ``MAGIC | len(key id) | key id | nonce (12) | ciphertext+tag``. The
key id in the header is what makes rotation possible: old blobs stay readable with
their old key until `rotate_encryption_key` re-encrypts them with the current one.
The header and the object's storage name are authenticated data, so a blob moved to
another name, or a header edited to point at another key, fails to decrypt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"CWENC1"
NONCE_BYTES = 12  # the GCM standard nonce; random per blob (2^-32 collision bound at 2^32 blobs per key)


class EncryptionError(Exception):
    """A blob that cannot be decrypted: unknown key, damaged header, or failed authentication."""


@dataclass(frozen=True)
class KeyRing:
    """Keys by id; ``current_id`` encrypts, every key decrypts."""

    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("the key ring is empty")

    @property
    def current_id(self) -> str:
        return self.keys[0][0]

    def get(self, key_id: str) -> bytes | None:
        return next((key for kid, key in self.keys if kid == key_id), None)


def _header(key_id: str) -> bytes:
    encoded = key_id.encode()
    return MAGIC + bytes([len(encoded)]) + encoded


def _split(blob: bytes) -> tuple[str, bytes, bytes, bytes]:
    """(key id, header, nonce, ciphertext) of a blob, or EncryptionError."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 1:
        raise EncryptionError("the stored object is not an encrypted CancerWeb blob")
    id_len = blob[len(MAGIC)]
    header_end = len(MAGIC) + 1 + id_len
    body_start = header_end + NONCE_BYTES
    if id_len == 0 or len(blob) < body_start + 16:
        raise EncryptionError("the stored object's encryption header is damaged")
    try:
        key_id = blob[len(MAGIC) + 1 : header_end].decode("ascii")
    except UnicodeDecodeError as exc:
        raise EncryptionError("the stored object's encryption header is damaged") from exc
    return key_id, blob[:header_end], blob[header_end:body_start], blob[body_start:]


def blob_key_id(blob: bytes) -> str:
    return _split(blob)[0]


def encrypt(plaintext: bytes, *, keyring: KeyRing, name: str) -> bytes:
    key_id = keyring.current_id
    key = keyring.get(key_id)
    assert key is not None
    header = _header(key_id)
    nonce = os.urandom(NONCE_BYTES)
    return header + nonce + AESGCM(key).encrypt(nonce, plaintext, header + b"\x00" + name.encode())


def decrypt(blob: bytes, *, keyring: KeyRing, name: str) -> bytes:
    key_id, header, nonce, ciphertext = _split(blob)
    key = keyring.get(key_id)
    if key is None:
        raise EncryptionError(f"the stored object was encrypted with key {key_id!r}, which is not configured")
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, header + b"\x00" + name.encode())
    except InvalidTag as exc:
        raise EncryptionError("the stored object failed authentication: it was altered or belongs elsewhere") from exc

"""Re-encrypt every stored object (scans, heat maps) with the current key.

Rotation: put a new key first in CANCERWEB_ENCRYPTION_KEYS, keep the old ones after
it, restart, run this command, then remove the old keys. Each object is replaced
atomically and objects already on the current key are skipped, so the command can be
interrupted and run again (idempotent, resumable)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from diagnostics.intake import storage
from diagnostics.intake.encryption import EncryptionError


class Command(BaseCommand):
    help = "Re-encrypt every stored object with the current (first) key of CANCERWEB_ENCRYPTION_KEYS."

    def handle(self, *args: Any, **options: Any) -> None:
        current = storage.keyring().current_id
        rotated = unchanged = restored = 0
        failed: list[str] = []
        # First finish what an interrupted run on an object store left half done.
        for name in list(storage.iter_object_names()):
            if name.endswith(storage.PARTIAL_SUFFIX):
                storage.scan_storage().delete(name)
            elif name.endswith(storage.ROTATING_SUFFIX) and storage.finish_interrupted_rotation(name) is not None:
                restored += 1
        for name in list(storage.iter_object_names()):
            try:
                if storage.rotate_object(name):
                    rotated += 1
                else:
                    unchanged += 1
            except EncryptionError as exc:
                failed.append(f"{name}: {exc}")
        self.stdout.write(
            f"current key {current}: {rotated} re-encrypted, {unchanged} already current, "
            f"{restored} restored from an interrupted run, {len(failed)} failed"
        )
        if failed:
            raise CommandError("could not re-encrypt:\n" + "\n".join(failed))

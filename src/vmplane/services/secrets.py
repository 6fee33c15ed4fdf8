"""Secrets vmplane must keep but never show (vCenter passwords): sealed with a key kept in
the data dir (mode 0600, made on first use) by AES-128-CBC + HMAC (Fernet, `cryptography`)."""

import json
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from ..errors import VmplaneError

KEY_FILE = "secrets.key"


class SecretBox:
    """`seal(dict) -> str` and `open(str) -> dict` with the key in `key_file`."""

    def __init__(self, key_file: Path) -> None:
        self.key_file = key_file
        self._fernet: Fernet | None = None

    def _key(self) -> Fernet:
        if self._fernet is None:
            try:
                key = self.key_file.read_bytes().strip()
            except FileNotFoundError:
                self.key_file.parent.mkdir(parents=True, exist_ok=True)
                key = Fernet.generate_key()
                try:  # O_EXCL: two processes starting at once agree on one key
                    fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    key = self.key_file.read_bytes().strip()
                else:
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(key + b"\n")
            self._fernet = Fernet(key)
        return self._fernet

    def seal(self, value: dict[str, Any]) -> str:
        return self._key().encrypt(json.dumps(value).encode()).decode()

    def open(self, token: str) -> dict[str, Any]:
        try:
            return dict(json.loads(self._key().decrypt(token.encode())))
        except (InvalidToken, ValueError) as exc:
            raise VmplaneError(f"a stored secret cannot be decrypted with {self.key_file} (was the key replaced?)") from exc

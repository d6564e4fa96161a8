"""The admin key a gateway generates for itself when `auth.keys` configures none, and how the CLI finds it.

Nothing is trusted for where it connects from: with no admin key configured, the gateway's first start writes
a random secret to `data_dir/admin.key` (mode 0600, written whole or not at all), and from then on admin
operations need it like any configured key. Whoever can read that file (the user that runs the server, or
root) is the operator; the `lambent` CLI on the same host reads it by itself, so a first run stays one
command. A function's jail does not see the data dir, and its user could not read the file if it did.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

KEY_ID = "local-admin"       # the access key id for SigV4 clients (boto3) that use the generated key
FILE_NAME = "admin.key"
_SECRET = re.compile(r"[0-9a-f]{64}")


class AdminKeyError(Exception):
    """The key file exists but cannot be used: says which file and what to do."""


def key_path(data_dir: Path) -> Path:
    return Path(data_dir) / FILE_NAME


def ensure(data_dir: Path) -> tuple[str, Path, bool]:
    """The generated secret, its file, and whether this call created it.

    Several gateways starting at once on one data dir agree on one key: the secret is written to a file of
    its own and linked into place, which fails for every writer but the first, who then all read the winner's.
    """
    path = key_path(data_dir)
    secret = read(path)
    if secret is not None:
        return secret, path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(draft, path)
            created = True
        except FileExistsError:
            created = False
    finally:
        draft.unlink(missing_ok=True)
    secret = read(path)
    if secret is None:
        raise AdminKeyError(f"{path} vanished while it was being written: start the gateway again")
    return secret, path, created


def read(path: Path) -> str | None:
    """The secret in `path`; None when there is no such file. A file others may read is refused, not used."""
    try:
        with open(path) as handle:
            mode = os.fstat(handle.fileno()).st_mode
            text = handle.read(200).strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AdminKeyError(f"cannot read the admin key {path}: {exc.strerror}: run this as the user that runs "
                            "the server, or pass the key with --secret / LAMBENT_SECRET") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AdminKeyError(f"the admin key {path} may be read by other users (mode {stat.S_IMODE(mode):o}): "
                            f"it may have leaked; delete it and restart the gateway to generate a new one "
                            f"(or `chmod 600 {path}` if you know it has not)")
    if not _SECRET.fullmatch(text):
        raise AdminKeyError(f"{path} does not hold a generated admin key (64 hex digits): delete it and restart "
                            "the gateway to generate a new one")
    return text

"""Function code as zips: pack a folder deterministically, check a zip, unpack it into the local cache.

A version's code is stored once in Redis under its sha256; each node unpacks it into
`data_dir/code/<hash>/`, which becomes the sandbox's task root (Lambda's /var/task).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .spec import FunctionSpec, SpecError

_ALWAYS_IGNORED = ("__pycache__", "*.pyc", ".git", ".DS_Store", ".lambentignore")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)   # fixed entry times make the zip, and so its hash, reproducible


class CodeError(ValueError):
    """A function folder or zip that cannot be deployed; the message says what to change."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    zipped_bytes: int = 50 * 1024 * 1024         # Lambda's direct-upload limit
    unzipped_bytes: int = 250 * 1024 * 1024      # Lambda's unzipped limit
    entries: int = 20000


@dataclass(frozen=True, kw_only=True)
class Package:
    """A checked zip: its bytes, content hash and parsed function.yaml."""
    zip_bytes: bytes
    code_hash: str
    spec: FunctionSpec


def _ignore_patterns(folder: Path) -> list[str]:
    patterns = list(_ALWAYS_IGNORED)
    ignore_file = folder / ".lambentignore"
    if ignore_file.is_file():
        for line in ignore_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                patterns.append(line.rstrip("/"))
    return patterns


def _ignored(relative: PurePosixPath, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(part, pattern) for part in relative.parts for pattern in patterns) or any(
        fnmatch.fnmatch(str(relative), pattern) for pattern in patterns)


def pack_folder(folder: Path) -> bytes:
    """Zip a function folder: sorted entries, fixed times, symlinks refused, ignored files left out."""
    if not folder.is_dir():
        raise CodeError(f"{folder}: not a folder")
    patterns = _ignore_patterns(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                path = Path(root) / name
                relative = PurePosixPath(path.relative_to(folder).as_posix())
                if _ignored(relative, patterns):
                    continue
                if path.is_symlink():
                    raise CodeError(f"{path}: symbolic links are not deployed; copy the file instead")
                info = zipfile.ZipInfo(str(relative), date_time=_FIXED_TIME)
                info.external_attr = (stat.S_IFREG | (0o755 if os.access(path, os.X_OK) else 0o644)) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())
            dirs[:] = [d for d in dirs if not _ignored(PurePosixPath(d), patterns)]
    return buffer.getvalue()


def check_zip(zip_bytes: bytes, *, limits: Limits = Limits()) -> Package:
    """Refuse a zip that escapes its folder, is too big, or has a bad function.yaml or missing handler."""
    if len(zip_bytes) > limits.zipped_bytes:
        raise CodeError(f"the zip is {len(zip_bytes)} bytes; the limit is {limits.zipped_bytes}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(zip_bytes))
    except zipfile.BadZipFile:
        raise CodeError("the upload is not a zip file") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.entries:
            raise CodeError(f"the zip has {len(infos)} entries; the limit is {limits.entries}")
        total = 0
        names = set()
        for info in infos:
            _check_entry(info)
            total += info.file_size
            if total > limits.unzipped_bytes:
                raise CodeError(f"the zip unpacks to more than {limits.unzipped_bytes} bytes")
            names.add(info.filename)
        spec_text = _read_limited(archive, "function.yaml", limits) if "function.yaml" in names else None
        try:
            spec = FunctionSpec.parse(spec_text)
        except SpecError as exc:
            raise CodeError(str(exc)) from None
        module = spec.handler.rsplit(".", 1)[0].replace(".", "/")
        if f"{module}.py" not in names and f"{module}/__init__.py" not in names:
            raise CodeError(f"handler '{spec.handler}': no file {module}.py in the folder")
    return Package(zip_bytes=zip_bytes, code_hash=hashlib.sha256(zip_bytes).hexdigest(), spec=spec)


def _check_entry(info: zipfile.ZipInfo) -> None:
    name = info.filename
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise CodeError(f"zip entry '{name}': absolute paths are not allowed")
    if ".." in path.parts:
        raise CodeError(f"zip entry '{name}': '..' would escape the function folder")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise CodeError(f"zip entry '{name}': symbolic links are not allowed")
    if info.flag_bits & 0x1:
        raise CodeError(f"zip entry '{name}': encrypted entries are not supported")


def _read_limited(archive: zipfile.ZipFile, name: str, limits: Limits) -> bytes:
    with archive.open(name) as handle:
        data = handle.read(limits.unzipped_bytes + 1)
    if len(data) > limits.unzipped_bytes:
        raise CodeError(f"zip entry '{name}' inflates past the limit")
    return data


def unpack(zip_bytes: bytes, target: Path, *, limits: Limits = Limits()) -> Path:
    """Unpack into `target` atomically (a temporary folder renamed into place); a no-op when present."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
            written = 0
            for info in archive.infolist():
                _check_entry(info)
                destination = staging / info.filename
                if info.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(destination, "wb") as sink:
                    # Count what is actually inflated, not what the header claims: a bomb lies.
                    while chunk := source.read(1 << 16):
                        written += len(chunk)
                        if written > limits.unzipped_bytes:
                            raise CodeError(f"the zip inflates past {limits.unzipped_bytes} bytes")
                        sink.write(chunk)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    destination.chmod(mode | 0o400)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():   # another process won the race with the same content: fine
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target

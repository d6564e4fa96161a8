"""Function code as zips: pack a folder deterministically, check a zip, unpack it into the local cache.

A version's code is stored once in Redis under its sha256; each node unpacks it into
`data_dir/code/<hash>/`, which becomes the sandbox's task root (Lambda's /var/task).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import lzma
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Callable

from .spec import FunctionSpec, SpecError

_ALWAYS_IGNORED = ("__pycache__", "*.pyc", ".git", ".DS_Store", ".lambentignore")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)   # fixed entry times make the zip, and so its hash, reproducible
_COMPRESSIONS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
# What zipfile raises for a damaged or lying archive (bad CRC, truncated stream, unknown method).
# (bz2 reports bad data as OSError; every source here is in memory, so no OSError is a disk's.)
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError, OSError)


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
                patterns.append(line.strip("/"))
    return patterns


def _ignored(relative: PurePosixPath, patterns: list[str]) -> bool:
    """True when a pattern matches the path, one of its folders, or the name of either (`build/out`, `*.log`)."""
    parts = relative.parts
    for depth in range(1, len(parts) + 1):
        name, prefix = parts[depth - 1], "/".join(parts[:depth])
        if any(fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(prefix, pattern) for pattern in patterns):
            return True
    return False


def pack_folder(folder: Path) -> bytes:
    """Zip a function folder: sorted entries, fixed times, symlinks refused, ignored files left out."""
    if not folder.is_dir():
        raise CodeError(f"{folder}: not a folder")
    patterns = _ignore_patterns(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, files in os.walk(folder):
            base = PurePosixPath(Path(root).relative_to(folder).as_posix())
            # os.walk lists a link to a folder among `dirs` and does not enter it: refuse it, as a file link.
            dirs[:] = sorted(d for d in dirs if not _ignored(base / d, patterns))
            for name in dirs:
                if (Path(root) / name).is_symlink():
                    raise CodeError(f"{Path(root) / name}: symbolic links are not deployed; copy the folder instead")
            for name in sorted(files):
                path = Path(root) / name
                relative = base / name
                if _ignored(relative, patterns):
                    continue
                if path.is_symlink():
                    raise CodeError(f"{path}: symbolic links are not deployed; copy the file instead")
                info = zipfile.ZipInfo(str(relative), date_time=_FIXED_TIME)
                info.external_attr = (stat.S_IFREG | (0o755 if os.access(path, os.X_OK) else 0o644)) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def check_zip(zip_bytes: bytes, *, limits: Limits = Limits(),
              configure: Callable[[FunctionSpec], FunctionSpec] | None = None) -> Package:
    """Refuse a zip that escapes its folder, is too big, or has a bad function.yaml or missing handler.
    `configure(the zip's function.yaml)` gives the configuration when it does not come from the zip alone (the
    Lambda API's CreateFunction and UpdateFunctionCode)."""
    if len(zip_bytes) > limits.zipped_bytes:
        raise CodeError(f"the zip is {len(zip_bytes)} bytes; the limit is {limits.zipped_bytes}")
    archive = _open(zip_bytes)
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.entries:
            raise CodeError(f"the zip has {len(infos)} entries; the limit is {limits.entries}")
        total = 0
        names: set[str] = set()
        for info in infos:
            _check_entry(info)
            total += info.file_size
            if total > limits.unzipped_bytes:
                raise CodeError(f"the zip unpacks to more than {limits.unzipped_bytes} bytes")
            # Two entries with one name: the one checked need not be the one unpacked.
            if info.filename in names:
                raise CodeError(f"zip entry '{info.filename}' appears twice")
            names.add(info.filename)
        spec_text = _read_limited(archive, "function.yaml", limits) if "function.yaml" in names else None
        try:
            spec = FunctionSpec.parse(spec_text)
        except SpecError as exc:
            raise CodeError(str(exc)) from None
        if configure is not None:
            spec = configure(spec)
        module = spec.handler.rsplit(".", 1)[0].replace(".", "/")
        if f"{module}.py" not in names and f"{module}/__init__.py" not in names:
            raise CodeError(f"handler '{spec.handler}': no file {module}.py in the folder")
    return Package(zip_bytes=zip_bytes, code_hash=hashlib.sha256(zip_bytes).hexdigest(), spec=spec)


def _open(zip_bytes: bytes) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(zip_bytes))
    except (zipfile.BadZipFile, ValueError, EOFError, OSError):   # a truncated central directory can seek < 0
        raise CodeError("the upload is not a zip file") from None


def _check_entry(info: zipfile.ZipInfo) -> None:
    name = info.filename
    path = PurePosixPath(name)
    if not path.parts or path.parts == (".",):
        raise CodeError(f"zip entry '{name}': an empty name is not allowed")
    if name.startswith(("/", "\\")) or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise CodeError(f"zip entry '{name}': absolute paths are not allowed")
    if ".." in path.parts:
        raise CodeError(f"zip entry '{name}': '..' would escape the function folder")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise CodeError(f"zip entry '{name}': symbolic links are not allowed")
    if info.flag_bits & 0x1:
        raise CodeError(f"zip entry '{name}': encrypted entries are not supported")
    if info.compress_type not in _COMPRESSIONS:
        raise CodeError(f"zip entry '{name}': compression method {info.compress_type} is not supported")


def _read_limited(archive: zipfile.ZipFile, name: str, limits: Limits) -> bytes:
    with _open_entry(archive, archive.getinfo(name)) as handle:
        data = _read_chunk(handle, name, limits.unzipped_bytes + 1)
    if len(data) > limits.unzipped_bytes:
        raise CodeError(f"zip entry '{name}' inflates past the limit")
    return data


def unpack(zip_bytes: bytes, target: Path, *, limits: Limits = Limits()) -> Path:
    """Unpack into `target` atomically (a temporary folder renamed into place); a no-op when present."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    # Readable by the sandbox's own user, as Lambda's /var/task is; never writable by it.
    staging.chmod(0o755)
    try:
        with _open(zip_bytes) as archive:
            written = 0
            for info in archive.infolist():
                _check_entry(info)
                destination = staging / info.filename
                if info.is_dir():
                    destination.mkdir(mode=0o755, parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                with _open_entry(archive, info) as source, open(destination, "wb") as sink:
                    # Count what is actually inflated, not what the header claims: a bomb lies.
                    # (zipfile stops at the declared size and then fails the CRC: also a refusal.)
                    while chunk := _read_chunk(source, info.filename):
                        written += len(chunk)
                        if written > limits.unzipped_bytes:
                            raise CodeError(f"the zip inflates past {limits.unzipped_bytes} bytes")
                        sink.write(chunk)
                mode = (info.external_attr >> 16) & 0o755
                destination.chmod(mode | 0o444 if mode else 0o644)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():   # another process won the race with the same content: fine
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _open_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> IO[bytes]:
    try:
        return archive.open(info)
    except _ZIP_ERRORS as exc:
        raise CodeError(f"zip entry '{info.filename}' is damaged: {exc}") from None


def _read_chunk(source: IO[bytes], name: str, size: int = 1 << 16) -> bytes:
    try:
        return source.read(size)
    except _ZIP_ERRORS as exc:
        raise CodeError(f"zip entry '{name}' is damaged: {exc}") from None

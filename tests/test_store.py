"""The code store: pack a folder, check an uploaded zip, unpack it safely. Pure: files in tmp_path only."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import zipfile
from pathlib import Path

import pytest

from runtime.functions.package import CodeError, Limits, check_zip, pack_folder, unpack

HANDLER = b"def handler(event, context):\n    return event\n"


def make_folder(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def make_zip(entries: dict[str, bytes], *, mode: int = stat.S_IFREG | 0o644,
             compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = mode << 16
            info.compress_type = compression
            archive.writestr(info, data)
    return buffer.getvalue()


def names_in(zip_bytes: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        return archive.namelist()


# Offsets of a field in a local file header and in a central directory header, and its struct format.
FLAGS = (6, 8, "<H")
COMPRESSION = (8, 10, "<H")
UNCOMPRESSED_SIZE = (22, 24, "<I")


def patch(zip_bytes: bytes, field: tuple[int, int, str], value: int) -> bytes:
    """Rewrite one header field of every entry, in the local headers and the central directory alike."""
    local, central, fmt = field
    data = bytearray(zip_bytes)
    for signature, offset in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        start = 0
        while (found := data.find(signature, start)) != -1:
            struct.pack_into(fmt, data, found + offset, value)
            start = found + 4
    return bytes(data)


# -- pack_folder ------------------------------------------------------------------------------


def test_packing_the_same_folder_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "fn", {"handler.py": HANDLER, "lib/util.py": "X = 1\n", "data/a.json": "{}"})

    assert pack_folder(folder) == pack_folder(folder)


def test_packing_ignores_modification_times(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "fn", {"handler.py": HANDLER, "lib/util.py": "X = 1\n"})
    before = hashlib.sha256(pack_folder(folder)).hexdigest()

    for path in folder.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    after = hashlib.sha256(pack_folder(folder)).hexdigest()

    assert before == after


def test_packing_a_changed_file_changes_the_bytes(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "fn", {"handler.py": HANDLER})
    before = pack_folder(folder)

    (folder / "handler.py").write_text("def handler(event, context):\n    return 1\n")

    assert pack_folder(folder) != before


def test_two_folders_with_the_same_files_pack_alike_whatever_the_creation_order(tmp_path: Path) -> None:
    first = make_folder(tmp_path / "one", {"b.py": "b", "a/z.py": "z", "a/y.py": "y", "handler.py": HANDLER})
    second = make_folder(tmp_path / "two", {"handler.py": HANDLER, "a/y.py": "y", "a/z.py": "z", "b.py": "b"})

    assert pack_folder(first) == pack_folder(second)
    assert names_in(pack_folder(first)) == ["b.py", "handler.py", "a/y.py", "a/z.py"]


def test_packing_keeps_the_executable_bit_and_fixes_the_rest_of_the_mode(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "fn", {"handler.py": HANDLER, "run.sh": "#!/bin/sh\n"})
    (folder / "run.sh").chmod(0o700)
    (folder / "handler.py").chmod(0o600)

    with zipfile.ZipFile(io.BytesIO(pack_folder(folder))) as archive:
        modes = {info.filename: info.external_attr >> 16 for info in archive.infolist()}

    assert modes == {"handler.py": stat.S_IFREG | 0o644, "run.sh": stat.S_IFREG | 0o755}


def test_packing_skips_bytecode_caches_and_version_control(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "fn", {
        "handler.py": HANDLER, "__pycache__/handler.cpython-311.pyc": b"\0", "lib/__pycache__/x.pyc": b"\0",
        "stray.pyc": b"\0", ".git/HEAD": "ref", ".DS_Store": b"\0", "lib/util.py": "X = 1\n"})

    assert names_in(pack_folder(folder)) == ["handler.py", "lib/util.py"]


def test_packing_skips_what_lambentignore_names(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "fn", {
        ".lambentignore": "# local files\n*.log\n\ntests/\n/docs/internal\nnotes.txt\n",
        "handler.py": HANDLER, "debug.log": "x", "lib/run.log": "x", "tests/test_x.py": "x",
        "docs/internal/secret.md": "x", "docs/public.md": "x", "notes.txt": "x", "lib/notes.txt.py": "x"})

    assert names_in(pack_folder(folder)) == ["handler.py", "docs/public.md", "lib/notes.txt.py"]


def test_a_symlinked_file_is_refused(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "fn", {"handler.py": HANDLER})
    outside = make_folder(tmp_path / "outside", {"secret.txt": "s"})
    (folder / "secret.txt").symlink_to(outside / "secret.txt")

    with pytest.raises(CodeError, match="secret.txt: symbolic links are not deployed"):
        pack_folder(folder)


def test_a_symlinked_folder_is_refused_rather_than_left_out(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "fn", {"handler.py": HANDLER})
    outside = make_folder(tmp_path / "outside", {"lib.py": "x"})
    (folder / "vendor").symlink_to(outside, target_is_directory=True)

    with pytest.raises(CodeError, match="vendor: symbolic links are not deployed"):
        pack_folder(folder)


def test_a_symlink_inside_an_ignored_folder_does_not_matter(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "fn", {"handler.py": HANDLER, ".lambentignore": ".venv\n", ".venv/lib/x.py": "x"})
    (folder / ".venv" / "python").symlink_to("/usr/bin/python3")

    assert names_in(pack_folder(folder)) == ["handler.py"]


def test_packing_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CodeError, match="not a folder"):
        pack_folder(tmp_path / "nope")


def test_a_packed_folder_passes_the_check_and_unpacks_to_the_same_files(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "fn", {"handler.py": HANDLER, "function.yaml": "timeout: 5\n",
                                           "lib/util.py": "X = 1\n"})
    zip_bytes = pack_folder(folder)

    package = check_zip(zip_bytes)
    target = unpack(zip_bytes, tmp_path / "code" / package.code_hash)

    assert package.code_hash == hashlib.sha256(zip_bytes).hexdigest()
    assert package.spec.timeout_s == 5
    assert sorted(str(path.relative_to(target)) for path in target.rglob("*") if path.is_file()) == [
        "function.yaml", "handler.py", "lib/util.py"]
    assert (target / "handler.py").read_bytes() == HANDLER


# -- check_zip ---------------------------------------------------------------------------------


def test_a_zip_without_function_yaml_gets_the_default_spec() -> None:
    package = check_zip(make_zip({"handler.py": HANDLER}))

    assert package.spec.handler == "handler.handler"


def test_a_handler_in_a_package_is_found() -> None:
    package = check_zip(make_zip({"function.yaml": b"handler: app.main.handle\n", "app/main.py": HANDLER}))

    assert package.spec.handler == "app.main.handle"


@pytest.mark.parametrize("data", [b"", b"not a zip at all", b"PK\x03\x04" + b"\0" * 40])
def test_something_that_is_not_a_zip_is_refused(data: bytes) -> None:
    with pytest.raises(CodeError, match="the upload is not a zip file"):
        check_zip(data)


def test_a_truncated_zip_is_refused() -> None:
    zip_bytes = make_zip({"handler.py": HANDLER})

    with pytest.raises(CodeError, match="not a zip file"):
        check_zip(zip_bytes[: len(zip_bytes) // 2])


@pytest.mark.parametrize(("name", "says"), [
    ("../evil.py", "'..' would escape the function folder"),
    ("lib/../../evil.py", "'..' would escape the function folder"),
    ("/abs.py", "absolute paths are not allowed"),
    ("C:/evil.py", "absolute paths are not allowed"),
    ("lib\\..\\evil.py", "absolute paths are not allowed"),
])
def test_an_entry_that_escapes_the_folder_is_refused(name: str, says: str) -> None:
    zip_bytes = make_zip({"handler.py": HANDLER, name: b"x"})

    with pytest.raises(CodeError, match=f"zip entry '.*': {says}"):
        check_zip(zip_bytes)


def test_a_symlink_entry_is_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", HANDLER)
        link = zipfile.ZipInfo("passwd")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    zip_bytes = buffer.getvalue()

    with pytest.raises(CodeError, match="zip entry 'passwd': symbolic links are not allowed"):
        check_zip(zip_bytes)


def test_entries_whose_declared_sizes_add_up_past_the_limit_are_refused() -> None:
    zip_bytes = make_zip({"handler.py": HANDLER, "a.bin": b"\0" * 600, "b.bin": b"\0" * 600})

    with pytest.raises(CodeError, match="the zip unpacks to more than 1000 bytes"):
        check_zip(zip_bytes, limits=Limits(unzipped_bytes=1000))


def test_a_zip_over_the_upload_size_is_refused() -> None:
    zip_bytes = make_zip({"handler.py": HANDLER})

    with pytest.raises(CodeError, match=f"the zip is {len(zip_bytes)} bytes; the limit is 100"):
        check_zip(zip_bytes, limits=Limits(zipped_bytes=100))


def test_a_zip_with_too_many_entries_is_refused() -> None:
    zip_bytes = make_zip({"handler.py": HANDLER, **{f"f{index}.py": b"" for index in range(5)}})

    with pytest.raises(CodeError, match="the zip has 6 entries; the limit is 5"):
        check_zip(zip_bytes, limits=Limits(entries=5))


def test_a_zip_without_the_handler_module_is_refused() -> None:
    zip_bytes = make_zip({"main.py": HANDLER})

    with pytest.raises(CodeError, match="handler 'handler.handler': no file handler.py in the folder"):
        check_zip(zip_bytes)


def test_a_zip_whose_function_yaml_names_a_missing_module_is_refused() -> None:
    zip_bytes = make_zip({"function.yaml": b"handler: app.main.handle\n", "handler.py": HANDLER})

    with pytest.raises(CodeError, match="no file app/main.py in the folder"):
        check_zip(zip_bytes)


def test_a_bad_function_yaml_is_refused_with_its_own_message() -> None:
    zip_bytes = make_zip({"function.yaml": b"timeout: 0\nasync: {retries: 3}\n", "handler.py": HANDLER})

    with pytest.raises(CodeError) as raised:
        check_zip(zip_bytes)

    assert "function.yaml: timeout: Input should be greater than 0" in str(raised.value)
    assert "function.yaml: async.retries: unknown key" in str(raised.value)


def test_a_zip_with_the_same_name_twice_is_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr("handler.py", HANDLER)
        archive.writestr("handler.py", b"import os\n")

    with pytest.raises(CodeError, match="zip entry 'handler.py' appears twice"):
        check_zip(buffer.getvalue())


def test_an_encrypted_entry_is_refused() -> None:
    zip_bytes = patch(make_zip({"handler.py": HANDLER}), FLAGS, 0x1)

    with pytest.raises(CodeError, match="zip entry 'handler.py': encrypted entries are not supported"):
        check_zip(zip_bytes)


def test_an_unknown_compression_method_is_refused() -> None:
    zip_bytes = patch(make_zip({"handler.py": HANDLER}), COMPRESSION, 99)

    with pytest.raises(CodeError, match="compression method 99 is not supported"):
        check_zip(zip_bytes)


def test_a_damaged_function_yaml_is_refused() -> None:
    zip_bytes = bytearray(make_zip({"function.yaml": b"timeout: 5\n" * 50, "handler.py": HANDLER}))
    data_start = 30 + len("function.yaml")          # after the first local header and its name
    zip_bytes[data_start + 2] ^= 0xFF

    with pytest.raises(CodeError, match="zip entry 'function.yaml' is damaged"):
        check_zip(bytes(zip_bytes))


# -- unpack ------------------------------------------------------------------------------------


def test_unpack_writes_the_files_with_their_modes_and_leaves_no_staging_folder(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "fn", {"handler.py": HANDLER, "bin/tool": "#!/bin/sh\n"})
    (folder / "bin" / "tool").chmod(0o755)
    zip_bytes = pack_folder(folder)
    target = tmp_path / "code" / "abc"

    result = unpack(zip_bytes, target)

    assert result == target
    assert (target / "handler.py").read_bytes() == HANDLER
    assert os.access(target / "bin" / "tool", os.X_OK)
    assert [path.name for path in (tmp_path / "code").iterdir()] == ["abc"]


def test_unpack_does_nothing_when_the_target_exists(tmp_path: Path) -> None:
    target = tmp_path / "code" / "abc"
    target.mkdir(parents=True)
    (target / "marker").write_text("already here")

    unpack(make_zip({"handler.py": HANDLER}), target)

    assert [path.name for path in target.iterdir()] == ["marker"]


def test_unpack_stops_past_the_limit_and_leaves_nothing_behind(tmp_path: Path) -> None:
    zip_bytes = make_zip({"handler.py": HANDLER, "big.bin": b"\0" * 100_000})
    target = tmp_path / "code" / "abc"

    with pytest.raises(CodeError, match="the zip inflates past 50000 bytes"):
        unpack(zip_bytes, target, limits=Limits(unzipped_bytes=50_000))

    assert not target.exists()
    assert list((tmp_path / "code").iterdir()) == []


def test_a_bomb_whose_headers_understate_its_size_passes_the_check_but_is_stopped_on_unpack(tmp_path: Path) -> None:
    # 10 MB of zeros deflates to about 10 KB; the headers are rewritten to claim 100 bytes.
    honest = make_zip({"handler.py": HANDLER, "big.bin": b"\0" * 10_000_000})
    lying = patch(honest, UNCOMPRESSED_SIZE, 100)
    limits = Limits(unzipped_bytes=1_000_000)
    target = tmp_path / "code" / "bomb"

    check_zip(lying, limits=limits)      # the declared sizes are within the limit
    # zipfile inflates no more than the declared size, then finds the CRC wrong: refused either way.
    with pytest.raises(CodeError, match="zip entry 'big.bin' is damaged: Bad CRC-32|inflates past"):
        unpack(lying, target, limits=limits)

    assert not target.exists()
    assert list((tmp_path / "code").iterdir()) == []


def test_a_damaged_entry_is_refused_on_unpack(tmp_path: Path) -> None:
    zip_bytes = bytearray(make_zip({"handler.py": HANDLER * 20}))
    zip_bytes[30 + len("handler.py") + 2] ^= 0xFF
    target = tmp_path / "code" / "abc"

    with pytest.raises(CodeError, match="zip entry 'handler.py' is damaged"):
        unpack(bytes(zip_bytes), target)

    assert not target.exists()


def test_unpack_refuses_an_entry_that_escapes_even_without_the_check(tmp_path: Path) -> None:
    target = tmp_path / "code" / "abc"

    with pytest.raises(CodeError, match="would escape the function folder"):
        unpack(make_zip({"handler.py": HANDLER, "../evil.py": b"x"}), target)

    assert not target.exists()
    assert not (tmp_path / "code" / "evil.py").exists()


def test_unpack_refuses_something_that_is_not_a_zip(tmp_path: Path) -> None:
    with pytest.raises(CodeError, match="not a zip file"):
        unpack(b"nope", tmp_path / "code" / "abc")

    assert list((tmp_path / "code").iterdir()) == []

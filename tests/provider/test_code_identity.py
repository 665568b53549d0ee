"""Code and runtime hashes are deterministic and change when what they name changes."""

from __future__ import annotations

import hashlib
import shutil
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from moonflower.provider import code_identity
from moonflower.provider.code_identity import (
    CodeIdentityUnavailable,
    code_hash,
    interpreter_files,
    package_root,
    runtime_description,
    runtime_hash,
)

HEX_SHA256_LENGTH = 64


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A small package tree shaped like moonflower's: code, package data, compiled leftovers."""
    root = tmp_path / "copy" / "moonflower"
    (root / "ledger" / "migrations" / "versions").mkdir(parents=True)
    (root / "__init__.py").write_text('"""Moonflower."""\n')
    (root / "py.typed").write_text("")
    (root / "ledger" / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    (root / "ledger" / "migrations" / "script.py.mako").write_text("revision = ${repr(up)}\n")
    (root / "ledger" / "migrations" / "versions" / "0001_initial.py").write_text("revision = '1'\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\xa7\r\r\n compiled")
    return root


def test_the_running_package_is_found() -> None:
    root = package_root()
    assert (root / "__init__.py").is_file()
    assert (root / "provider" / "code_identity.py").is_file()


def test_the_running_package_hashes_the_same_twice_and_quickly() -> None:
    started = time.perf_counter()
    first = code_hash()
    elapsed = time.perf_counter() - started
    assert first == code_hash()
    assert len(first) == HEX_SHA256_LENGTH
    assert int(first, 16) >= 0
    assert elapsed < 2.0


def test_a_tree_hashes_the_same_wherever_it_lives(package: Path, tmp_path: Path) -> None:
    elsewhere = shutil.copytree(package, tmp_path / "elsewhere" / "site-packages" / "moonflower")
    assert code_hash(package) == code_hash(package)
    assert code_hash(package) == code_hash(elsewhere)


def test_changing_one_byte_of_a_source_file_changes_the_hash(package: Path) -> None:
    before = code_hash(package)
    (package / "__init__.py").write_text('"""Moonflower!"""\n')
    assert code_hash(package) != before


def test_package_data_is_covered(package: Path) -> None:
    before = code_hash(package)
    (package / "ledger" / "migrations" / "script.py.mako").write_text("revision = None\n")
    assert code_hash(package) != before


def test_adding_removing_or_renaming_a_file_changes_the_hash(package: Path) -> None:
    original = code_hash(package)
    extra = package / "ledger" / "extra.py"
    extra.write_text("")
    assert code_hash(package) != original
    extra.unlink()
    assert code_hash(package) == original
    (package / "py.typed").rename(package / "py.typed.bak")
    assert code_hash(package) != original


def test_compiled_files_and_timestamps_do_not_count(package: Path) -> None:
    before = code_hash(package)
    (package / "__pycache__" / "other.cpython-311.pyc").write_bytes(b"more bytecode")
    (package / "ledger" / "stray.pyc").write_bytes(b"bytecode")
    nested_cache = package / "ledger" / "__pycache__"
    nested_cache.mkdir()
    (nested_cache / "anything.txt").write_text("derived")
    source = package / "__init__.py"
    source.touch()
    assert code_hash(package) == before


def test_content_cannot_imitate_a_file_boundary(tmp_path: Path) -> None:
    # Raw `path\0content\0` records would make these two trees hash alike.
    one = tmp_path / "one"
    one.mkdir()
    (one / "a").write_bytes(b"X\0b\0Y")
    two = tmp_path / "two"
    two.mkdir()
    (two / "a").write_bytes(b"X")
    (two / "b").write_bytes(b"Y")
    assert code_hash(one) != code_hash(two)


def test_code_hash_golden_bytes(tmp_path: Path) -> None:
    """Pins the encoding so another implementation can reproduce it:
    sha256( for each file in sorted relative POSIX path order:
            path  0x00  hex(sha256(content))  0x00 )."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_bytes(b"data")
    (tmp_path / "a.py").write_bytes(b"x = 1\n")
    stream = b"".join(
        path + b"\0" + hashlib.sha256(content).hexdigest().encode() + b"\0"
        for path, content in ((b"a.py", b"x = 1\n"), (b"sub/b.txt", b"data"))
    )
    expected = "6549d6eb3de11196aa26ad102184b51303d1386e0b6050753591196be4f463a0"
    assert hashlib.sha256(stream).hexdigest() == expected
    assert code_hash(tmp_path) == expected


def test_an_unreadable_tree_is_an_error_not_a_partial_hash(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(CodeIdentityUnavailable, match="no package directory"):
        code_hash(tmp_path / "missing")

    def unreadable(path: Path) -> str:
        raise PermissionError(f"denied: {path.name}")

    monkeypatch.setattr(code_identity, "_file_sha256", unreadable)
    with pytest.raises(CodeIdentityUnavailable, match="denied"):
        code_hash(package)


# --- runtime -------------------------------------------------------------------------------


def test_the_runtime_hash_is_stable_and_quick() -> None:
    started = time.perf_counter()
    first = runtime_hash()
    elapsed = time.perf_counter() - started
    assert first == runtime_hash()
    assert len(first) == HEX_SHA256_LENGTH
    assert elapsed < 1.0  # ~15 ms here; generous for a shared machine


def test_the_runtime_is_described_by_version_and_platform() -> None:
    description = runtime_description()
    assert sys.version in description
    assert description.startswith(sys.implementation.name + "|")
    assert sys.platform in description


def test_the_interpreter_files_are_the_real_binaries() -> None:
    files = interpreter_files()
    assert files[0] == Path(sys.executable).resolve()
    assert all(path.is_file() for path in files)
    if sys.platform == "linux" and sysconfig.get_config_var("Py_ENABLE_SHARED"):
        assert len(files) == 2
        assert files[1].name.startswith("libpython")


def test_the_runtime_hash_changes_with_the_binaries(tmp_path: Path) -> None:
    executable = tmp_path / "python3"
    library = tmp_path / "libpython3.so"
    executable.write_bytes(b"\x7fELF stub")
    library.write_bytes(b"\x7fELF interpreter")
    before = runtime_hash([executable, library])
    assert runtime_hash([executable, library]) == before
    assert runtime_hash([library, executable]) != before
    library.write_bytes(b"\x7fELF interpreter, patched")
    assert runtime_hash([executable, library]) != before


def test_a_missing_runtime_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CodeIdentityUnavailable):
        runtime_hash([tmp_path / "gone"])


def test_an_embedded_interpreter_without_an_executable_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(code_identity.sys, "executable", "")
    with pytest.raises(CodeIdentityUnavailable):
        interpreter_files()

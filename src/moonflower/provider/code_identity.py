"""Hashes naming the Moonflower code and the Python runtime this provider is running.

Owns `code_hash()` (the installed `moonflower` package: sources and package data) and
`runtime_hash()` (the interpreter build: its version string and its binaries). Both are
deterministic: the same files give the same hex SHA-256 on any machine, in any directory.
This module reads files only; it must not import anything it hashes, cache results in module
state, or decide whether a hash is acceptable (the coordinator's blessed set does that).

What these hashes can and cannot show: they detect a provider running other code than a
released build (a local patch, a stale checkout, a different interpreter). They cannot stop a
provider that controls its machine from reporting a blessed value it did not compute; only
hardware-rooted attestation narrows that.

Code hash. Every regular file under the package directory, except `__pycache__` directories
and `*.pyc` / `*.pyo` files (derived, machine-specific, and rewritten by the interpreter), is
one record `relative/posix/path \\0 sha256(content) as hex \\0`, fed in sorted path order into
one SHA-256. Each file's content is digested first, rather than written raw between NUL
separators, so that no two different trees can produce the same byte stream (file content may
itself contain NUL; a hex digest cannot).

Runtime hash. One SHA-256 over `implementation | sys.version | sys.platform | machine \\0`
followed by `sha256(file) as hex \\0` for the interpreter executable and, when the interpreter
is built shared (most distribution and pyenv builds: the executable is then a ~20 kB stub),
the libpython it loaded. Paths are left out so that the same build installed elsewhere hashes
the same. The standard library and site-packages are not covered: hashing them would take
seconds, not the ~15 ms this takes, and dependencies are better pinned by a lock file.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

import moonflower
from moonflower.errors import CodeIdentityUnavailable

_SKIPPED_DIRECTORIES = frozenset({"__pycache__"})
_SKIPPED_SUFFIXES = (".pyc", ".pyo")
_PROC_SELF_MAPS = Path("/proc/self/maps")


def package_root() -> Path:
    """The directory of the running `moonflower` package."""
    return Path(moonflower.__file__).resolve().parent


def code_hash(root: Path | None = None) -> str:
    """Hex SHA-256 over the package at `root` (the running `moonflower` package by default).

    Raises CodeIdentityUnavailable when the tree cannot be read: a hash that silently skipped
    a file would name code that is not running."""
    root = package_root() if root is None else root
    digest = hashlib.sha256()
    try:
        if not root.is_dir():
            raise CodeIdentityUnavailable(f"no package directory at {root}")
        for relative, path in sorted(_package_files(root)):
            digest.update(relative.encode("utf-8") + b"\0")
            digest.update(_file_sha256(path).encode("ascii") + b"\0")
    except OSError as exc:
        raise CodeIdentityUnavailable(f"cannot read the package at {root}: {exc}") from exc
    return digest.hexdigest()


def runtime_hash(files: Sequence[Path] | None = None) -> str:
    """Hex SHA-256 naming the Python runtime: its version string, then the digests of `files`
    in the order given (`interpreter_files()` by default)."""
    files = interpreter_files() if files is None else files
    digest = hashlib.sha256()
    digest.update(runtime_description().encode("utf-8") + b"\0")
    try:
        for path in files:
            digest.update(_file_sha256(path).encode("ascii") + b"\0")
    except OSError as exc:
        raise CodeIdentityUnavailable(f"cannot read the Python runtime: {exc}") from exc
    return digest.hexdigest()


def runtime_description() -> str:
    """Implementation, full version string (with build date and compiler), OS family, CPU."""
    return "|".join(
        (sys.implementation.name, sys.version, sys.platform, platform.machine() or "unknown")
    )


def interpreter_files() -> list[Path]:
    """The running interpreter's executable, then the libpython it loaded when built shared.

    Raises CodeIdentityUnavailable for an embedded interpreter with no executable."""
    if not sys.executable:
        raise CodeIdentityUnavailable("the interpreter does not know its own executable")
    executable = Path(sys.executable).resolve()
    library = _loaded_libpython() or _configured_libpython()
    return [executable] if library is None or library == executable else [executable, library]


def _package_files(root: Path) -> Iterator[tuple[str, Path]]:
    for directory, subdirectories, filenames in os.walk(root, onerror=_raise):
        subdirectories[:] = [name for name in subdirectories if name not in _SKIPPED_DIRECTORIES]
        for name in filenames:
            path = Path(directory, name)
            if name.endswith(_SKIPPED_SUFFIXES) or not path.is_file():
                continue
            yield path.relative_to(root).as_posix(), path


def _raise(error: OSError) -> None:
    raise error


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _loaded_libpython() -> Path | None:
    """Linux: the libpython mapped into this process, which is what actually runs."""
    try:
        maps = _PROC_SELF_MAPS.read_text(errors="replace")
    except OSError:
        return None
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and Path(fields[5]).name.startswith("libpython"):
            return Path(fields[5]).resolve()
    return None


def _configured_libpython() -> Path | None:
    """Elsewhere (macOS): where the build says its shared library or framework lives."""
    library = sysconfig.get_config_var("LDLIBRARY")
    if not library or not (
        sysconfig.get_config_var("Py_ENABLE_SHARED") or sysconfig.get_config_var("PYTHONFRAMEWORK")
    ):
        return None
    for prefix in ("PYTHONFRAMEWORKPREFIX", "LIBDIR"):
        directory = sysconfig.get_config_var(prefix)
        if directory and (candidate := Path(directory, library)).is_file():
            return candidate.resolve()
    return None

"""`constraints.txt` pins every package an install resolves, and the environment the tests
run in was installed with it (`scripts/bootstrap`)."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXTRAS_INSTALLED = ("llamacpp", "postgres", "dev")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pairs = (line.split("==") for line in lines if line and not line.startswith("#"))
    return {normalized(name): version for name, version in pairs}


def declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in EXTRAS_INSTALLED:
        requirements += project["optional-dependencies"][extra]
    names = (re.match(r"[A-Za-z0-9_.-]+", req) for req in requirements)
    return {normalized(match.group()) for match in names if match}


def test_every_declared_dependency_is_pinned() -> None:
    assert declared() - set(pins()) == set()


def test_the_environment_holds_the_pinned_versions() -> None:
    wrong = {
        name: (version, importlib.metadata.version(name))
        for name, version in pins().items()
        if name not in {"pip", "setuptools"} and importlib.metadata.version(name) != version
    }
    assert wrong == {}


def test_the_compiled_fast_paths_are_installed() -> None:
    """Each has a pure-Python fallback that works, slower: an install without them passes
    every other test (see `benchmarks.results.COMPILED_FAST_PATHS`)."""
    from benchmarks.results import fast_paths

    expected = {name: True for name in fast_paths()}
    if sys.platform == "win32":
        expected["uvloop"] = False
    assert fast_paths() == expected

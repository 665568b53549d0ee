"""Lower layers never import upper ones, and no import hides inside a function to dodge a cycle.

Every module under src/moonflower is parsed (not imported) and its imports checked:

- the coordinator and the provider are strangers: neither imports the other; what both need
  (the posture rule, the bundled models and their weight files) lives outside both;
- modules shared by every part (errors, generation, wire, crypto, prompting, ledger, client, …)
  import neither the coordinator, the provider nor the CLI;
- inside the coordinator, dialects render and parse wire shapes only: they import none of the
  app, the routes, the dispatcher or the request runner (`exchange`); only routes run requests
  through `exchange`, only the app installs routes, and only the CLI builds the app;
- an import of a Moonflower module sits at the top of its module, where a cycle shows, except
  for the lazy imports listed in `LAZY_IMPORTS`, each of a module that pulls in an optional
  heavy dependency, with the reason.

Type-only imports (`if TYPE_CHECKING:`) count as imports: a type is a dependency too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src"
PACKAGE = "moonflower"

LAZY_IMPORTS: dict[tuple[str, str], str] = {
    (
        "moonflower.provider.engines",
        "moonflower.provider.engines.llama_cpp",
    ): "an engine is imported only once it is chosen and its library (llama-cpp-python, "
    "optional) is known to be installed; the package must load on machines without it",
}
"""(importing module, imported module) → why the import waits until it is needed."""

COORDINATOR = "moonflower.coordinator"
PROVIDER = "moonflower.provider"
CLI = "moonflower.cli"
UPPER_PARTS = (COORDINATOR, PROVIDER, CLI, "moonflower.__main__")
"""Everything else under moonflower is shared by these, and so imports none of them."""
DIALECTS = "moonflower.coordinator.dialects"
APP = "moonflower.coordinator.app"
ROUTES = "moonflower.coordinator.routes"
DISPATCH = "moonflower.coordinator.dispatch"
EXCHANGE = "moonflower.coordinator.exchange"


@dataclass(frozen=True)
class Import:
    importer: str
    """The dotted name of the module the import is in."""
    targets: tuple[str, ...]
    """What it may load: the module, and for `from m import n` also `m.n` (n may be one)."""
    line: int
    is_in_function: bool

    def reaches(self, package: str) -> bool:
        return any(_is_within(target, package) for target in self.targets)

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.targets[-1]}"


def _is_within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_in(path: Path) -> Iterator[Import]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def walk(node: ast.AST, is_in_function: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            inside = is_in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(module, (alias.name,), child.lineno, inside)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                names = tuple(f"{base}.{alias.name}" for alias in child.names)
                yield Import(module, (base, *names), child.lineno, inside)
            yield from walk(child, inside)

    yield from walk(tree, False)


def _all_imports() -> list[Import]:
    found = [
        item
        for path in sorted((SRC / PACKAGE).rglob("*.py"))
        for item in _imports_in(path)
        if item.reaches(PACKAGE)
    ]
    assert len(found) > 100, "the source tree was not found"
    return found


IMPORTS = _all_imports()


def _report(found: list[str]) -> str:
    return "\n".join(found)


def _violations(importers: str | tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    within = (importers,) if isinstance(importers, str) else importers
    return [
        str(item)
        for item in IMPORTS
        if any(_is_within(item.importer, part) for part in within)
        and any(item.reaches(package) for package in forbidden)
    ]


def test_the_coordinator_imports_nothing_of_the_provider() -> None:
    found = _violations(COORDINATOR, (PROVIDER,))
    assert not found, _report(found)


def test_the_provider_imports_nothing_of_the_coordinator() -> None:
    found = _violations(PROVIDER, (COORDINATOR,))
    assert not found, _report(found)


def test_the_ledger_imports_nothing_of_the_coordinator() -> None:
    found = _violations("moonflower.ledger", (COORDINATOR,))
    assert not found, _report(found)


def test_shared_modules_import_neither_the_coordinator_the_provider_nor_the_cli() -> None:
    shared = [
        str(item)
        for item in IMPORTS
        if not any(_is_within(item.importer, part) for part in UPPER_PARTS)
        and any(item.reaches(part) for part in UPPER_PARTS)
    ]
    assert not shared, _report(shared)


def test_dialects_import_no_app_routes_dispatcher_or_request_runner() -> None:
    found = _violations(DIALECTS, (APP, ROUTES, DISPATCH, EXCHANGE))
    assert not found, _report(found)


@pytest.mark.parametrize(
    ("module", "importers"),
    [
        (EXCHANGE, (ROUTES,)),
        (ROUTES, (APP, ROUTES)),
        (APP, (CLI,)),
    ],
)
def test_upper_coordinator_modules_are_imported_only_from_above(
    module: str, importers: tuple[str, ...]
) -> None:
    others = [
        str(item)
        for item in IMPORTS
        if item.reaches(module) and not any(_is_within(item.importer, part) for part in importers)
    ]
    assert not others, _report(others)


def test_moonflower_modules_are_imported_at_module_level() -> None:
    hidden = [
        str(item)
        for item in IMPORTS
        if item.is_in_function
        and not any((item.importer, target) in LAZY_IMPORTS for target in item.targets)
    ]
    assert not hidden, _report(hidden)


def test_every_allowed_lazy_import_still_exists() -> None:
    """An allowance outlives its import only by mistake: it would let a new one in."""
    lazy = {
        (item.importer, target)
        for item in IMPORTS
        if item.is_in_function
        for target in item.targets
    }
    assert set(LAZY_IMPORTS) <= lazy

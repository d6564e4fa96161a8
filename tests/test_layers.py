"""The layer contract of runtime/ ([tool.lambent.layers] in pyproject.toml): no module imports a higher layer.

The import graph is read with ast from the source, so every import counts: at module level, inside functions
(an import hidden in a function is still a dependency), under `if TYPE_CHECKING:`, relative and absolute.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .helpers import ROOT


@dataclass(frozen=True)
class Layer:
    number: int
    name: str
    components: tuple[tuple[str, ...], ...]    # each: the module prefixes that form one component
    independent: bool                          # components of this layer may not import one another


def layers_of(contract: Sequence[dict[str, Any]]) -> list[Layer]:
    """The layers of a [tool.lambent.layers] table: lowest first."""
    layers = []
    for number, table in enumerate(contract):
        together = [tuple(group) for group in table.get("together", [])]
        grouped = {prefix for group in together for prefix in group}
        alone = [(prefix,) for prefix in table["modules"] if prefix not in grouped]
        layers.append(Layer(number=number, name=table["name"], components=tuple(together + alone),
                            independent=bool(table.get("independent", False))))
    return layers


def modules_of(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` (a folder under `root`), by dotted name; a package by its own name."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The modules of `modules` that module `name` imports anywhere in its source (module names, resolved)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _known(alias.name, modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name.split(".")[:len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:       # `from a import b`: a.b when that is a module, else a
                yield from _known(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base, modules)


def _known(target: str, modules: dict[str, Path]) -> Iterator[str]:
    """`target`, or the nearest package holding it, when it is one of `modules`."""
    parts = target.split(".")
    while parts:
        if ".".join(parts) in modules:
            yield ".".join(parts)
            return
        parts.pop()


def _placement(module: str, layers: list[Layer]) -> tuple[Layer, tuple[str, ...]] | None:
    """The layer and component of the longest prefix naming `module` or one of its packages."""
    best: tuple[int, Layer, tuple[str, ...]] | None = None
    for layer in layers:
        for component in layer.components:
            for prefix in component:
                if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), layer, component)
    return (best[1], best[2]) if best else None


def violations(root: Path, package: str, contract: Sequence[dict[str, Any]]) -> list[str]:
    """Each breach of the contract, as a line: an import of a higher layer, or of another component of an
    independent layer; a module in no layer; a prefix that names no module."""
    layers, modules = layers_of(contract), modules_of(root, package)
    modules.pop(package, None)          # the top package itself (empty) is in no layer
    found = []
    for layer in layers:
        for component in layer.components:
            for prefix in component:
                if not any(module == prefix or module.startswith(prefix + ".") for module in modules):
                    found.append(f"{prefix} (layer {layer.number}) names no module: remove it from the contract")
    for module, path in modules.items():
        placed = _placement(module, layers)
        if placed is None:
            found.append(f"{module} is in no layer: add it to [tool.lambent.layers] in pyproject.toml")
            continue
        layer, component = placed
        for target in sorted(set(imports_of(module, path, modules))):
            if (target_placed := _placement(target, layers)) is None:
                continue                # reported as a module in no layer above
            target_layer, target_component = target_placed
            if target_layer.number > layer.number or (
                    target_layer is layer and layer.independent and target_component != component):
                found.append(f"{module} imports {target} (layer {layer.number} -> {target_layer.number})")
    return found


def test_no_module_of_runtime_imports_a_higher_layer() -> None:
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["lambent"]["layers"]
    found = violations(ROOT, "runtime", contract)
    assert not found, "the layer contract ([tool.lambent.layers] in pyproject.toml) is broken:\n" + "\n".join(found)


# ---------------------------------------------------------------- the check itself, on a package of its own

SYNTHETIC: list[dict[str, Any]] = [
    {"name": "low", "modules": ["pkg.low"]},
    {"name": "roles", "independent": True, "modules": ["pkg.web", "pkg.cron", "pkg.cron_tools"],
     "together": [["pkg.cron", "pkg.cron_tools"]]},
]


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in {"pkg/__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_a_clean_package_has_no_violations(tmp_path: Path) -> None:
    # given a role that imports the layer below, and two prefixes that form one role importing each other
    write_package(tmp_path, {"pkg/low.py": "import os\n", "pkg/web.py": "from .low import x\n",
                             "pkg/cron/__init__.py": "from ..cron_tools import y\n",
                             "pkg/cron_tools.py": "from pkg import cron\n"})
    assert violations(tmp_path, "pkg", SYNTHETIC) == []


def test_an_import_of_a_higher_layer_inside_a_function_is_a_violation(tmp_path: Path) -> None:
    # given a low module that imports a role inside a function, relatively, and one that does so absolutely
    write_package(tmp_path, {"pkg/low/__init__.py": "", "pkg/low/a.py": "def f():\n    from ..web import h\n",
                             "pkg/low/b.py": "import pkg.web.app\n", "pkg/web/__init__.py": "",
                             "pkg/web/app.py": "", "pkg/cron.py": "", "pkg/cron_tools.py": ""})
    assert violations(tmp_path, "pkg", SYNTHETIC) == ["pkg.low.a imports pkg.web (layer 0 -> 1)",
                                                      "pkg.low.b imports pkg.web.app (layer 0 -> 1)"]


def test_a_role_importing_another_role_and_an_unplaced_module_are_violations(tmp_path: Path) -> None:
    write_package(tmp_path, {"pkg/low.py": "", "pkg/web.py": "from pkg.cron import schedule\n",
                             "pkg/cron.py": "", "pkg/cron_tools.py": "", "pkg/stray.py": ""})
    assert violations(tmp_path, "pkg", SYNTHETIC) == ["pkg.stray is in no layer: add it to [tool.lambent.layers] "
                                                      "in pyproject.toml",
                                                      "pkg.web imports pkg.cron (layer 1 -> 1)"]


def test_a_prefix_that_names_no_module_is_a_violation(tmp_path: Path) -> None:
    write_package(tmp_path, {"pkg/low.py": "", "pkg/web.py": "", "pkg/cron.py": ""})
    assert violations(tmp_path, "pkg", SYNTHETIC) == [
        "pkg.cron_tools (layer 1) names no module: remove it from the contract"]

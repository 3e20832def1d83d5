"""The house rules of docs/ARCHITECTURE.md, checked on the source: layers import only downward,
no module imports in a circle, the verifier side never reaches the device side.

Every import counts, including the lazy ones inside functions and those under TYPE_CHECKING:
a lazy import still ties two modules together. ``__main__`` modules are entry points, not layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tpm2_attest"

LAYERS: dict[str, int] = {
    # the TPM 2.0 language and the few things everything may use
    "tpm2": 0, "_version": 0, "_files": 0, "_der": 0, "_frozen": 0, "progress": 0,
    "errors": 1,
    # bytes to a TPM; evidence formats; pure parsers of measurement logs
    "transport": 2, "evidence": 2, "eventlog": 2, "ima": 2,
    "commands": 3,
    # verifier functions, trust material, the embedded swtpm manager
    "verify": 4, "trust": 4, "embedded": 4,
    "backends": 5,
    "tpm": 6, "policy": 6,
    "demo": 7, "probe": 7, "probe_windows": 7, "service": 7, "agent": 7,
    "cli": 8,
}
"""Each top-level module or package of tpm2_attest and its layer: a module imports only from
its own layer or below. A new top-level module must be placed here (and in the docs)."""

VERIFIER_SIDE = {"evidence", "eventlog", "ima", "verify", "trust", "policy"}
DEVICE_SIDE = {"transport", "commands", "backends", "tpm", "embedded"}


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for f in SRC.rglob("*.py"):
        parts = list(f.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The tpm2_attest modules ``name`` imports (resolved to modules that exist)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target
                       for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for t in targets:
            if not t.startswith("tpm2_attest"):
                continue
            while t not in MODULES and "." in t:
                t = t.rsplit(".", 1)[0]
            if t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()
         if not name.endswith("__main__")}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer() -> None:
    unplaced = sorted({_top(m) for m in GRAPH} - set(LAYERS) - {""})
    assert not unplaced, f"place these in LAYERS (and docs/ARCHITECTURE.md): {unplaced}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _top(m)))
def test_imports_go_downward(module: str) -> None:
    mine = LAYERS[_top(module)]
    upward = sorted(dep for dep in GRAPH[module]
                    if _top(dep) and LAYERS[_top(dep)] > mine)
    assert not upward, f"{module} (layer {mine}) imports from higher layers: {upward}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _top(m) in VERIFIER_SIDE))
def test_verifier_side_never_reaches_the_device_side(module: str) -> None:
    device = sorted(dep for dep in GRAPH[module] if _top(dep) in DEVICE_SIDE)
    assert not device, f"{module} (verifier side, no TPM, no OS calls) imports {device}"


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components over the module graph: none larger than one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"modules importing in a circle: {cycles}"


def test_the_real_pcp_backend_does_not_depend_on_its_emulator() -> None:
    assert "tpm2_attest.backends.pcp_emulator" not in GRAPH["tpm2_attest.backends.pcp"]


def test_the_checker_sees_lazy_imports() -> None:
    """The checker itself: a function-level import is an edge (tpm.py imports the emulator lazily)."""
    assert "tpm2_attest.backends.pcp_emulator" in GRAPH["tpm2_attest.tpm"]

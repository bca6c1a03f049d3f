"""The package's architecture, read from its own imports: no import circle, no import from a stage to a
later one (core <- data <- training <- evaluation <- studies; plots and the benchmarks beside), nothing in
the library importing a benchmark, and modules small enough to read in one sitting.

Every import counts, including one inside a function: a lazy import that hides a circle is still one.
Each rule has a mutation check that adds one offending import and shows that the rule fails on it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "knowinject"

# Stage of each part of the package: a module may import from its own stage and from earlier ones only.
STAGES = {"core": 0, "stats": 1, "data": 2, "train": 3, "eval": 4, "studies": 5, "plots": 6, "pipeline": 6,
          "compare": 6, "forest": 6, "verify": 6,
          "bench": 7}
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(source: str, name: str, known: set[str], is_package: bool = False) -> set[str]:
    """The package's modules that ``source`` (the module ``name``) imports, anywhere in the file.
    ``from pkg import x`` is an import of ``pkg.x`` when that is a module, of ``pkg`` otherwise."""
    package = name if is_package else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "knowinject"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "knowinject":
                continue
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in out if m in known and m != name}


def graph(overrides: dict[str, str] | None = None) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``overrides``: module -> source to read instead)."""
    mods = modules()
    known = set(mods)
    return {m: imports_of((overrides or {}).get(m) or p.read_text(), m, known, p.name == "__init__.py")
            for m, p in mods.items()}


def stage(module: str) -> int | None:
    parts = module.split(".")
    return STAGES.get(parts[1]) if len(parts) > 1 else None


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle (one list of modules per strongly connected component larger than one module)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def upward(g: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from a module to one of a later stage."""
    return sorted((a, b) for a, deps in g.items() for b in deps
                  if stage(a) is not None and stage(b) is not None and stage(b) > stage(a))


def of_benchmarks(g: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports of a benchmark from outside the benchmarks."""
    return sorted((a, b) for a, deps in g.items() for b in deps
                  if b.startswith("knowinject.bench") and not a.startswith("knowinject.bench"))


def long_modules(paths: dict[str, Path]) -> dict[str, int]:
    """Modules over :data:`MAX_LINES` lines, with their length."""
    return {m: n for m, p in paths.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}


def test_every_part_of_the_package_has_a_stage():
    parts = {m.split(".")[1] for m in modules() if "." in m}
    assert parts <= set(STAGES), f"modules outside every stage: {parts - set(STAGES)}; add them to STAGES"


def test_the_package_has_no_import_circle():
    assert circles(graph()) == []


def test_no_module_imports_from_a_later_stage():
    assert upward(graph()) == []


def test_nothing_in_the_library_imports_a_benchmark():
    assert of_benchmarks(graph()) == []


def test_every_module_reads_in_one_sitting():
    assert long_modules(modules()) == {}


# --- mutation checks: one offending import added to a module's source ---------------------------------------

def _with_lazy_import(module: str, line: str) -> dict[str, str]:
    source = modules()[module].read_text()
    return {module: source + f"\n\ndef _mutation():\n    {line}\n"}


@pytest.mark.parametrize("module, line", [
    # paths asking models for a slug again (models imports paths), hidden inside a function
    ("knowinject.core.paths", "from knowinject.train.models import slug"),
    # the study's design importing its own analysis (which imports the design)
    ("knowinject.studies.study_a.design", "from knowinject.studies.study_a import analysis"),
])
def test_a_lazy_import_that_closes_a_circle_is_found(module, line):
    assert circles(graph(_with_lazy_import(module, line)))


def test_an_import_from_a_later_stage_is_found():
    found = upward(graph(_with_lazy_import("knowinject.train.pretrain", "from knowinject.eval import evaluate")))
    assert found == [("knowinject.train.pretrain", "knowinject.eval.evaluate")]


def test_a_benchmark_imported_by_the_library_is_found():
    found = of_benchmarks(graph(_with_lazy_import("knowinject.studies.findings", "import knowinject.bench.machine")))
    assert found == [("knowinject.studies.findings", "knowinject.bench.machine")]


def test_a_long_module_is_found(tmp_path):
    grown = tmp_path / "pipeline.py"
    grown.write_text(modules()["knowinject.pipeline"].read_text() + "# more\n" * MAX_LINES)
    found = long_modules({"knowinject.pipeline": grown})
    assert found == {"knowinject.pipeline": len(grown.read_text().splitlines())}

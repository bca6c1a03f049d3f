"""Run the numbered notebooks headlessly with papermill, with the parameters of one profile.

Executed copies go to ``build/notebooks/<profile>/`` (git-ignored); the sources are never executed
in place. Parameters are checked against each notebook's ``parameters`` cell before anything runs,
and a failing notebook stops the pipeline with a message naming the notebook and the cell.

Usage: ``python -m knowinject.pipeline --profile smoke [01_generate_data ...]``.
"""

from __future__ import annotations

import argparse
import ast
import logging
import sys
import time
from pathlib import Path

from knowinject.core import paths
from knowinject.core.config import ConfigError, check_profile, notebook_params

# papermill's inferred type names for the literals a parameters cell may hold.
_PY_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,),
             "dict": (dict,), "None": (type(None),)}


def notebooks() -> list[Path]:
    return sorted(p for p in paths.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def resolve(names: list[str]) -> list[Path]:
    """Notebook paths for names given as stems, numbers (``01``) or file names; all if empty."""
    every = notebooks()
    if not names:
        return every
    chosen = []
    for name in names:
        stem = Path(name).stem
        hits = [p for p in every if p.stem == stem or p.stem.split("_")[0] == stem]
        if not hits:
            raise ConfigError(f"no notebook named {name!r}; notebooks: {', '.join(p.stem for p in every)}")
        chosen += hits
    return chosen


def check_parameters(nb: Path, params: dict) -> None:
    """Fail before running if a parameter is unknown to the notebook or of the wrong type."""
    import papermill

    declared = papermill.inspect_notebook(str(nb))
    if not declared:
        raise ConfigError(f"{nb.name} has no cell tagged 'parameters'")
    for name, value in params.items():
        if name not in declared:
            raise ConfigError(f"{nb.name}: unknown parameter {name!r}; it declares: {', '.join(declared)}")
        type_name = declared[name]["inferred_type_name"]
        if type_name == "None":  # no annotation: fall back on the type of the default literal
            try:
                type_name = type(ast.literal_eval(declared[name]["default"])).__name__
            except (ValueError, SyntaxError):
                continue
        ok = _PY_TYPES.get(type_name)
        if ok and (not isinstance(value, ok) or (isinstance(value, bool) and bool not in ok)):
            raise ConfigError(
                f"{nb.name}: parameter {name!r} must be {type_name} (as declared in its parameters cell: "
                f"{declared[name]['default']}), got {type(value).__name__} {value!r}"
            )


def run_notebook(nb: Path, profile: str) -> Path:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    params = notebook_params(profile, nb.stem)
    check_parameters(nb, params)
    out = paths.ensure(paths.EXECUTED / profile) / nb.name
    print(f"== {nb.stem} (profile {profile}) -> {paths.show(out)}", flush=True)
    start = time.time()
    try:
        papermill.execute_notebook(str(nb), str(out), parameters=params, kernel_name="python3",
                                   log_output=True, progress_bar=False, cwd=str(paths.NOTEBOOKS))
    except PapermillExecutionError as e:
        raise NotebookFailed(
            f"notebook {nb.name} failed in cell {e.cell_index} (execution count {e.exec_count}): "
            f"{e.ename}: {e.evalue}\n  executed copy with the traceback: {paths.show(out)}"
        ) from None
    seconds = time.time() - start
    print(f"== {nb.stem} done in {seconds:.0f} s", flush=True)
    # Wall time per notebook, appended, so the cost of each profile is measured rather than guessed.
    log = paths.EXECUTED / profile / "timings.csv"
    new = not log.exists()
    with open(log, "a") as f:
        f.write(("notebook,seconds,finished_utc\n" if new else "") +
                f"{nb.stem},{seconds:.1f},{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}\n")
    return out


class NotebookFailed(RuntimeError):
    pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("notebooks", nargs="*", help="stems or numbers; all numbered notebooks if none")
    args = ap.parse_args(argv)
    # papermill's --log-output goes through its logger: show the cells' output as they run.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.INFO)
    try:
        check_profile(args.profile)
        chosen = resolve(args.notebooks)
        for nb in chosen:  # check every notebook's parameters before spending time on the first
            check_parameters(nb, notebook_params(args.profile, nb.stem))
        for nb in chosen:
            run_notebook(nb, args.profile)
    except (ConfigError, NotebookFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

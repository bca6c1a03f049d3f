"""Run the numbered notebooks headlessly with papermill, with the parameters of one profile.

Executed copies go to ``build/notebooks/<profile>/`` (git-ignored); the sources are never executed
in place. Parameters are checked against each notebook's ``parameters`` cell before anything runs,
and a failing notebook stops the pipeline with a message naming the notebook and the cell.

Ctrl-C (SIGINT, or SIGTERM) stops it promptly and cleanly. The notebook's kernel leads a session of its
own (so a terminal's Ctrl-C never reaches it or its grid's workers); the pipeline passes the interrupt
on: the kernel's cell gets a KeyboardInterrupt, the grid stops handing out work and stops its workers,
each of which unwinds the runs it holds (temporary folders removed, claims released). The pipeline
then says what finished and what was dropped, and exits with 130 within ``STOP_S`` seconds; whatever
is still alive by then is killed. A second Ctrl-C stops everything at once. A rerun resumes: every
finished run is cached.

``-p NAME=VALUE`` sets a parameter of every chosen notebook that declares it, over the profile's (e.g.
``-p facts_path=my_facts.jsonl`` for notebooks 03, 05 and 06: Study B on a fact table of one's own); the
executed copies of such a run go to a subfolder named after the parameters.

A profile's ``second_models`` (the default's: Gemma 3) run notebooks again after SmolLM2's: each named notebook
right after its own run, with that model and the parameters given, into the model's own results folder
(:func:`runs_of`); a run given ``-p model_name=...`` or ``-p facts_path=...`` is that run alone.

Usage: ``python -m knowinject.pipeline --profile smoke [01_generate_data ...] [-p NAME=VALUE ...]``.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from knowinject.core import paths, stages
from knowinject.core.config import ConfigError, check_profile, notebook_params, second_models

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


def parse_overrides(items: list[str]) -> dict:
    """``NAME=VALUE`` pairs; a value is read as a Python literal where it is one (``3``, ``True``), else as text."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ConfigError(f"-p {item!r}: write a parameter as NAME=VALUE, e.g. -p facts_path=my_facts.jsonl")
        try:
            out[name.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name.strip()] = value
    return out


def _declared(nb: Path) -> set[str]:
    import papermill

    return set(papermill.inspect_notebook(str(nb)))


def run_notebook(nb: Path, profile: str, overrides: dict | None = None) -> Path:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    overrides = {k: v for k, v in (overrides or {}).items() if k in _declared(nb)}
    params = {**notebook_params(profile, nb.stem), **overrides}
    check_parameters(nb, params)
    # Executed copies of a run with parameters of one's own beside, not over, the profile's own.
    sub = "-".join(f"{k}-{Path(str(v)).name}" for k, v in sorted(overrides.items()))
    out = paths.ensure(paths.EXECUTED / profile / sub if sub else paths.EXECUTED / profile) / nb.name
    print(f"== {nb.stem} (profile {profile}) -> {paths.show(out)}", flush=True)
    # The stages of this notebook (its kernel's and its workers'), one JSON line each, read when it is done.
    stage_log = paths.ensure(out.parent / "stages") / f"{nb.stem}.jsonl"
    stage_log.write_text("")
    os.environ[stages.ENV] = str(stage_log)
    start = time.time()
    try:
        papermill.execute_notebook(str(nb), str(out), parameters=params, kernel_name="python3",
                                   log_output=True, progress_bar=False, cwd=str(paths.NOTEBOOKS))
    except PapermillExecutionError as e:
        raise NotebookFailed(
            f"notebook {nb.name} failed in cell {e.cell_index} (execution count {e.exec_count}): "
            f"{e.ename}: {e.evalue}\n  executed copy with the traceback: {paths.show(out)}"
        ) from None
    finally:
        os.environ.pop(stages.ENV, None)
    seconds = time.time() - start
    print(f"== {nb.stem} done in {seconds:.0f} s", flush=True)
    # Wall time per notebook, appended, so the cost of each profile is measured rather than guessed.
    log = out.parent / "timings.csv"
    new = not log.exists()
    with open(log, "a") as f:
        f.write(("notebook,seconds,finished_utc\n" if new else "") +
                f"{nb.stem},{seconds:.1f},{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}\n")
    record_stages(nb, profile, overrides, stages.read(stage_log), seconds)
    return out


def record_stages(nb: Path, profile: str, overrides: dict, rows: list[dict], seconds: float) -> Path:
    """The notebook's stage table (:func:`knowinject.core.stages.table`) into its ``stages.csv`` (:func:`stages_table`),
    in place of the rows an earlier run of the same notebook and parameters left there; the other rows stay, so
    the table holds each notebook's latest run (its commit and time on every row)."""
    import pandas as pd

    from knowinject.core import hardware
    from knowinject.core.provenance import git_state, save_table

    peaks = hardware.peaks()
    run = " ".join([nb.stem, *(f"{k}={Path(str(v)).name}" for k, v in sorted(overrides.items()))])
    new = stages.table(rows, seconds, peaks)
    new.insert(0, "run", run)
    new.insert(0, "notebook", nb.stem)
    git = git_state()
    new = new.assign(notebook_seconds=seconds, machine=hardware.machine(),
                     commit=git["git_commit"][:12] + ("+" if git["git_dirty"] else ""),
                     finished_utc=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()))
    path = stages_table(profile, overrides)
    old = None
    if path.exists():
        try:
            old = pd.read_csv(path, keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:  # measurements only
            print(f"warning: {paths.show(path)} could not be read ({type(e).__name__}): written anew with this "
                  "run's stages", file=sys.stderr)
    if old is not None and "run" in old and set(new.columns) <= set(old.columns):
        new = pd.concat([old[old.run != run], new], ignore_index=True)
    new = new.sort_values(["notebook", "run"], kind="stable")
    save_table(new, path, None, profile, peaks_flops_per_s=peaks)
    return path


def stages_table(profile: str, overrides: dict) -> Path:
    """Where a run's stage table goes: the profile's (its second real models' runs included, as they are part of
    its reproduce), or, for a model or a fact table of one's own, beside that run's own results."""
    from knowinject.data import facts

    from knowinject.train import models

    model, facts_path = overrides.get("model_name"), overrides.get("facts_path")
    if not facts_path and (not model or model == models.SMOLLM2 or model in second_models(profile)):
        return paths.results_dir(profile) / "stages.csv"
    return paths.results_dir(profile, models.slug(model or models.SMOLLM2),
                             facts.slug(facts_path) if facts_path else None) / "stages.csv"


def runs_of(nb: Path, profile: str, overrides: dict) -> list[dict]:
    """The parameter sets ``nb`` runs with, in order: its own run, then one per second real model of the profile
    that names it (``second_models``: Gemma's knownness and Study B after SmolLM2's). A run given a model or a
    fact table of one's own (``-p model_name=...``, ``-p facts_path=...``) is that run alone."""
    own = [dict(overrides)]
    if any(k in overrides for k in ("model_name", "facts_path")):
        return own
    return own + [{**overrides, "model_name": model, **nbs[nb.stem]}
                  for model, nbs in second_models(profile).items() if nb.stem in nbs]


class NotebookFailed(RuntimeError):
    pass


# How long the first Ctrl-C gives the notebook's kernel and workers to unwind before they are killed:
# a worker stops at its next Python bytecode, so seconds suffice; the bound is what the test requires.
STOP_S = 20.0


class Interrupt:
    """The pipeline's SIGINT / SIGTERM handler. The first signal interrupts the running kernel (and,
    after ``STOP_S``, kills what is left of its process tree); the second kills the tree at once."""

    def __init__(self):
        self.count = 0
        self.tree: list = []  # every process below the pipeline when the signal came (kernel, workers)
        self.timer: threading.Timer | None = None

    def install(self) -> dict:
        """Handle SIGINT and SIGTERM; returns the handlers they had (``restore`` puts them back)."""
        return {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def restore(previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def __call__(self, signum, frame) -> None:
        import psutil

        self.count += 1
        me = psutil.Process()
        self.tree = list({p.pid: p for p in self.tree + me.children(recursive=True)}.values())
        if self.count == 1:
            print(f"\ninterrupted ({signal.Signals(signum).name}): stopping the running notebook and its workers "
                  f"(within {STOP_S:.0f} s; press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
            for kernel in me.children():  # the notebook's kernel: an interrupt, as JupyterLab's stop button
                try:
                    kernel.send_signal(signal.SIGINT)
                except psutil.Error:
                    pass
            self.timer = threading.Timer(STOP_S, self.kill_tree)
            self.timer.daemon = True
            self.timer.start()
        else:
            print("\nsecond interrupt: stopping at once", file=sys.stderr, flush=True)
            self.kill_tree(grace_s=1.0)
            os._exit(130)

    def kill_tree(self, grace_s: float = 3.0) -> None:
        """Terminate every process of the tree still alive (workers first see SIGTERM and unwind), then kill."""
        import psutil

        alive = [p for p in self.tree if p.is_running()]
        for p in alive:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, left = psutil.wait_procs(alive, timeout=grace_s)
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                pass

    def finish(self) -> None:
        """After the interrupted notebook returned: nothing of its tree may outlive the pipeline."""
        if self.timer is not None:
            self.timer.cancel()
        self.kill_tree()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("notebooks", nargs="*", help="stems or numbers; all numbered notebooks if none")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                    help="a parameter for every chosen notebook that declares it (e.g. -p facts_path=my_facts.jsonl)")
    args = ap.parse_args(argv)
    # papermill's --log-output goes through its logger: show the cells' output as they run.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.INFO)
    stop = Interrupt()
    previous = stop.install()
    try:
        return _run(args, stop)
    finally:
        stop.restore(previous)  # main() may be called from another program (the tests): leave its handlers


def _folders() -> set[Path]:
    """Every folder below the results and figures roots now (a failed start removes the empty ones it made)."""
    return {p for root in (paths.RESULTS, paths.FIGURES) if root.is_dir() for p in root.rglob("*") if p.is_dir()}


def own_folders(profile: str, overrides: dict) -> set[Path]:
    """The results and figures folders a run of these parameters writes into (its second real models' too), and
    every folder between them and their roots: the only folders its clean-up may remove, so that a pipeline
    refused or stopped beside another never removes the other's new, still empty folder."""
    from knowinject.data import facts

    from knowinject.train import models

    model, facts_path = overrides.get("model_name"), overrides.get("facts_path")
    if model or facts_path:
        keys = [(models.slug(model or models.SMOLLM2), facts.slug(facts_path) if facts_path else None)]
    else:
        keys = [(None, None), *[(models.slug(m), None) for m in second_models(profile)]]
    out: set[Path] = set()
    for slug, facts_slug in keys:
        for root, folder in ((paths.RESULTS, paths.results_dir(profile, slug, facts_slug, create=False)),
                             (paths.FIGURES, paths.figures_dir(profile, slug, facts_slug, create=False))):
            while folder.is_relative_to(root) and folder != root:
                out.add(folder)
                folder = folder.parent
    return out


def _remove_empty(before: set[Path], own: set[Path]) -> None:
    """Remove the folders of this run (``own``) made since ``before`` that hold nothing, deepest first: a run
    that failed or was stopped leaves no empty results or figures folder behind (a folder holding a file is
    kept)."""
    for folder in sorted((_folders() - before) & own, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()  # only succeeds when empty
        except OSError:
            pass


def preflight(chosen: list[Path], profile: str, overrides: dict) -> None:
    """Judge everything the inputs alone can tell before any notebook starts, loading no weights: the model
    folder's files and config (its architecture must be a causal LM that ``AutoModelForCausalLM`` maps), the
    fact table's layout, encoding and the sizes Study B needs (a relation of 4 or more facts, subjects enough
    for a pool and a test half). A bad input fails here in seconds, not after notebook 03 has scored it."""
    def param(name: str):
        for nb in chosen:
            if name in _declared(nb):
                return {**notebook_params(profile, nb.stem), **overrides}.get(name)
        return None

    model_name, facts_path = param("model_name"), param("facts_path")
    if model_name and model_name != "smollm2":
        from knowinject.train import models
        models.check_name(model_name)
    if facts_path:
        from knowinject.core.config import build, stage_params

        from knowinject.studies.study_b import design
        from knowinject.studies.study_b.factset import FactSet

        facts = FactSet(facts_path, param("facts_format") or None)
        facts.facts  # noqa: B018 - reads and validates the table: layout, columns, encoding
        if any(nb.stem.startswith("05") for nb in chosen):
            design.preflight(facts, build(design.StudyBConfig, stage_params(profile, "study_b_smollm2"),
                                          "study_b_smollm2"))


def _run(args, stop: Interrupt) -> int:
    from knowinject.data.facts import FactTableError

    from knowinject.train.models import ModelNotFound

    done: list[str] = []
    chosen: list[Path] = []
    before, own = _folders(), set()
    try:
        check_profile(args.profile)
        chosen = resolve(args.notebooks)
        overrides = parse_overrides(args.param)
        own = own_folders(args.profile, overrides)
        unknown = [k for k in overrides if not any(k in _declared(nb) for nb in chosen)]
        if unknown:
            raise ConfigError(f"-p {', '.join(unknown)}: no chosen notebook declares it "
                              f"({', '.join(nb.stem for nb in chosen)})")
        for nb in chosen:  # check every notebook's parameters before spending time on the first
            for params in runs_of(nb, args.profile, overrides):
                check_parameters(nb, {**notebook_params(args.profile, nb.stem),
                                      **{k: v for k, v in params.items() if k in _declared(nb)}})
        preflight(chosen, args.profile, overrides)
        for nb in chosen:
            for params in runs_of(nb, args.profile, overrides):
                if stop.count:
                    break
                run_notebook(nb, args.profile, params)
            if stop.count:
                break
            done.append(nb.stem)
    except (ConfigError, NotebookFailed, FactTableError, ModelNotFound) as e:
        _remove_empty(before, own)
        if not stop.count:
            print(f"error: {e}", file=sys.stderr)
            return 2
    except BaseException:  # a kernel killed after the stop deadline ends papermill in its own way
        if not stop.count:
            raise
    if stop.count:
        stop.finish()
        _remove_empty(before, own)
        dropped = [nb.stem for nb in chosen if nb.stem not in done]
        print(f"stopped by an interrupt. Finished: {', '.join(done) or 'no notebook'}. Dropped: "
              f"{', '.join(dropped) or 'nothing'} (the interrupted notebook's finished runs are kept in the cache, "
              f"its runs in flight were discarded whole). Run the same command again to resume: it recomputes "
              f"only what is missing.", file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Profiles, typed configs, run ids and the run cache."""

from __future__ import annotations

import subprocess
import sys

import pytest

from knowinject.core import config, paths
from knowinject.core.config import ConfigError, build
from knowinject.core.runs import cached_run, is_done

from knowinject.data import world

from knowinject import pipeline


def test_unknown_profile_names_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown profile 'nonsense'; valid profiles: smoke, default, full"):
        config.load_profile("nonsense")


def test_pipeline_rejects_unknown_profile_before_running_anything():
    r = subprocess.run([sys.executable, "-m", "knowinject.pipeline", "--profile", "nonsense"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "valid profiles: smoke, default, full" in r.stderr


def test_broken_profile_yaml_names_the_file_and_line(tmp_path, monkeypatch):
    (tmp_path / "smoke.yaml").write_text("stages:\n  world:\n    seed: 0\n   n_people: [1, 2\n")
    monkeypatch.setattr(paths, "PARAMS", tmp_path)
    with pytest.raises(ConfigError, match=r"profile 'smoke' is not valid YAML: .*smoke.yaml, line \d+, column \d+: "):
        config.load_profile("smoke")


def test_pipeline_reports_a_broken_profile_without_a_traceback(tmp_path):
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(paths.ROOT / "notebooks", root / "notebooks")
    (root / "notebooks" / "params" / "smoke.yaml").write_text("stages: {world: [1, 2}\n")
    code = ("import sys; from pathlib import Path; from knowinject import pipeline; from knowinject.core import paths; "
            f"paths.PARAMS = Path({str(root / 'notebooks' / 'params')!r}); sys.exit(pipeline.main(['--profile', 'smoke']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "smoke.yaml, line 1" in r.stderr and "not valid YAML" in r.stderr


def test_wrong_type_names_the_parameter():
    with pytest.raises(ConfigError, match="parameter 'n_people' must be int, got str 'many'"):
        build(world.WorldConfig, {"n_people": "many"}, "world")
    with pytest.raises(ConfigError, match="unknown parameter"):
        build(world.WorldConfig, {"n_peple": 3}, "world")


def test_every_profile_builds_valid_configs():
    from knowinject.data import geo
    for profile in config.PROFILES:
        build(world.WorldConfig, config.stage_params(profile, "world"))
        build(geo.RealWorldConfig, config.stage_params(profile, "realworld"))


def test_notebook_parameter_of_wrong_type_is_named():
    nb = pipeline.resolve(["01"])[0]
    with pytest.raises(ConfigError, match="parameter 'n_examples' must be int"):
        pipeline.check_parameters(nb, {"profile": "smoke", "n_examples": "three"})
    with pytest.raises(ConfigError, match="unknown parameter 'bogus'"):
        pipeline.check_parameters(nb, {"bogus": 1})


def test_profiles_only_pass_parameters_the_notebooks_declare():
    for profile in config.PROFILES:
        for nb in pipeline.notebooks():
            pipeline.check_parameters(nb, config.notebook_params(profile, nb.stem))


def test_config_hash_is_stable_and_content_based():
    a = world.WorldConfig(seed=1)
    assert config.config_hash(a) == config.config_hash(world.WorldConfig(seed=1))
    assert config.config_hash(a) != config.config_hash(world.WorldConfig(seed=2))
    # A fixed value: sha256 of canonical JSON, not Python's per-process hash().
    assert config.config_hash({"b": 1, "a": [1, 2]}) == config.config_hash({"a": [1, 2], "b": 1}) == "94a786c366"


def test_cached_run_computes_once(tmp_path):
    calls = []

    def compute(folder):
        calls.append(1)
        (folder / "metrics.json").write_text("{}")

    a = cached_run(tmp_path, "x", {"k": 1}, compute, verbose=False)
    b = cached_run(tmp_path, "x", {"k": 1}, compute, verbose=False)
    assert a == b and len(calls) == 1 and is_done(a) and (a / "config.json").exists()


def test_interrupted_run_leaves_nothing_and_is_redone(tmp_path):
    def crash(folder):
        (folder / "half.json").write_text("{")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_run(tmp_path, "x", {"k": 2}, crash, verbose=False)
    assert list(tmp_path.iterdir()) == []
    folder = cached_run(tmp_path, "x", {"k": 2}, lambda f: (f / "ok").write_text("1"), verbose=False)
    assert (folder / "ok").exists()


def test_paths_are_anchored_on_the_package():
    assert (paths.ROOT / "src" / "knowinject" / "core" / "paths.py").exists()
    assert paths.PARAMS == paths.ROOT / "notebooks" / "params"


def test_make_rejects_unknown_profile_before_setup():
    r = subprocess.run(["make", "-C", str(paths.ROOT), "reproduce", "PROFILE=nonsense"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "valid profiles: smoke default full" in r.stderr
    assert "pip install" not in r.stdout  # it failed before any set-up


def test_make_help_lists_the_targets():
    r = subprocess.run(["make", "-C", str(paths.ROOT)], capture_output=True, text=True, timeout=60)
    for target in ("reproduce", "test", "smoke", "lab", "bench", "clean", "data", "pretrain"):
        assert f"make {target}" in r.stdout


def test_plotting_never_imports_torch():
    code = "import sys, knowinject.plots; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0

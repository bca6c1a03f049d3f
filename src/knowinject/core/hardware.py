"""The machine a run measures against: its name, and its matmul peak in each precision (measured once, cached).

Usage: ``hardware.peaks()`` -> ``{"bf16": FLOP/s, "fp32": FLOP/s}``; ``hardware.machine()`` names the CPU or GPU.
"""

from __future__ import annotations

import json
import os
import platform
import time

import torch

from knowinject.core import paths


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} x{torch.get_num_threads()} threads"


def matmul_peak(dtype, n: int = 2048, iters: int = 10, trials: int = 5) -> float:
    """Measured FLOP/s of a square matmul in ``dtype`` (the roofline MFU is reported against): the best
    of several trials, so a momentary stall does not lower the peak and inflate every MFU."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(iters):
            a @ b
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - start))
    return best


PEAKS = paths.ROOT / "build" / "machine_peaks.json"  # per machine, never committed: another machine measures its own


def peaks(precisions=("bf16", "fp32")) -> dict[str, float]:
    """The machine's matmul peak (FLOP/s, all its threads) in each precision, measured once per machine and
    torch version and cached in ``build/machine_peaks.json`` with what measured it. On a CPU without bf16 the
    bf16 peak is what its emulation reaches (stages there run in fp32)."""
    key = f"{machine()} | torch {torch.__version__}"
    try:
        cache = json.loads(PEAKS.read_text()) if PEAKS.exists() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):  # a damaged cache is measured again
        cache = {}
    entry = cache.get(key, {})
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    missing = [p for p in precisions if p not in entry]
    for p in missing:
        entry[p] = {"flops_per_s": matmul_peak(dtypes[p]), "n": 2048, "iters": 10, "trials": 5,
                    "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())}
    if missing:
        cache[key] = entry
        paths.ensure(PEAKS.parent)
        tmp = PEAKS.with_name(PEAKS.name + f".partial-{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, PEAKS)
    return {p: entry[p]["flops_per_s"] for p in precisions}

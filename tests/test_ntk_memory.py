"""`max_memory` is a promise: the measured peak extra memory of every implementation stays
within the budget, or the call refuses up front.

The measurement runs in a child process with glibc's mmap threshold lowered, so that freed
blocks go back to the system and the peak resident set (VmHWM, reset before each call) follows
the live tensors; the result itself is excluded, as `max_memory` documents.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

MiB = 2 ** 20
BUDGET = 8 * MiB
IMPLEMENTATIONS = ("auto", "factorised", "jacobian", "structured", "reference")
# The peak is read in pages and includes interpreter objects made during the call.
SLACK = 2 * MiB

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                                reason="peak memory is read from Linux's /proc")


def cases():
    """(name, model, inputs, mode) whose unbounded runs need several times BUDGET."""
    import torch
    from torch import nn

    from ntkpipe.models import Conv2d, Dense, build_model, make_mlp

    torch.manual_seed(0)
    cnn = nn.Sequential(Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                        Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), Dense(16, 10)).eval()
    vit = build_model("vit", (3, 8, 8), 10, width=16, depth=1, activation="gelu",
                      regime="feature", patch_size=2, heads=2, mlp_ratio=2.0).eval()
    return [("mlp", make_mlp(32, 128, 2, 10).eval(), torch.randn(256, 32), "full"),
            ("mlp-trace", make_mlp(32, 128, 2, 10).eval(), torch.randn(1200, 32), "trace"),
            ("cnn", cnn, torch.randn(128, 3, 16, 16), "full"),
            ("vit", vit, torch.randn(96, 3, 8, 8), "full")]


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure() -> list[dict]:
    """Child process: every case × implementation under BUDGET, and unbounded once."""
    import torch

    from ntkpipe.ntk import empirical_ntk

    torch.set_num_threads(1)
    rows = []
    for name, model, x, mode in cases():
        for impl in IMPLEMENTATIONS:
            slow = impl in ("jacobian", "reference") or (name, impl) == ("vit", "factorised")
            n = 32 if slow else x.shape[0]
            xs = x[:n]
            empirical_ntk(model, xs[:2], mode=mode, implementation=impl)  # load the kernels
            row = {"case": name, "impl": impl, "start": time.perf_counter()}
            for budget in (BUDGET, None):
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                before = _kib("VmRSS")
                try:
                    k = empirical_ntk(model, xs, mode=mode, implementation=impl,
                                      max_memory=budget)
                except ValueError as error:
                    row["refused"] = str(error)
                    row["peak"] = (_kib("VmHWM") - before) * 1024
                    break
                peak = (_kib("VmHWM") - before) * 1024 - k.numel() * k.element_size()
                row["peak" if budget else "unbounded"] = peak
                if budget:
                    kept = k
                else:
                    row["rel_diff"] = ((kept - k).norm() / k.norm()).item()
                del k
            row["seconds"] = time.perf_counter() - row.pop("start")
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def measured():
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_implementation_keeps_the_budget(measured):
    for row in measured:
        label = f"{row['case']} {row['impl']}"
        assert row["peak"] <= BUDGET + SLACK, f"{label}: peak {row['peak'] / MiB:.1f} MiB"
        if "refused" in row:
            assert "too small" in row["refused"] and "needs about" in row["refused"], label
            continue
        assert row["rel_diff"] < 1e-5, label


def test_the_budget_binds(measured):
    """Every case has implementations that need well over the budget when unbounded (the
    bound is not vacuous)."""
    for name in {row["case"] for row in measured}:
        assert any(row.get("unbounded", 0) > 1.5 * BUDGET for row in measured
                   if row["case"] == name), name


def test_the_auto_implementation_never_refuses_these_budgets(measured):
    assert all("refused" not in row for row in measured if row["impl"] == "auto")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    print(json.dumps(measure()))

"""The metrics stage: measures along `step` from ntk.nc, into metrics.nc."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ntkpipe import store
from ntkpipe.status import attrs as status_attrs


def _metric_kernels(ds: Any, kernel: str) -> np.ndarray:
    """(probe, step, M, M) stack of the kernel the metrics use."""
    if kernel == "full":
        full = ds["ntk_full"].values.astype(np.float64)  # (probe, step, N, N, O, O)
        p, s, n, _, o, _ = full.shape
        return full.transpose(0, 1, 2, 4, 3, 5).reshape(p, s, n * o, n * o)
    name = f"ntk_{kernel}"
    if name not in ds:
        raise ValueError(f"metrics.kernel is {kernel!r} but ntk.nc has no {name}; add "
                         f"{kernel!r} to ntk.kernels")
    return ds[name].values.astype(np.float64)


def _targets(ds: Any, probe_index: int, kernel: str) -> np.ndarray:
    labels = ds["label"].values[probe_index]
    y = np.eye(ds.sizes.get("output", int(labels.max()) + 1))[labels]
    return y.reshape(-1, 1) if kernel == "full" else y  # full: one target per (sample, output)


def _status(ds: Any, ends: list[int], starts: list[int], cfg: dict[str, Any]
            ) -> tuple[int, str]:
    """The run's status (ntkpipe.status) from each trained task's training accuracy and loss
    at its last snapshot, and its loss at its first."""
    from ntkpipe.status import classify

    steps = ds["step"].values
    firsts = [int(steps[steps >= s][0]) if (steps >= s).any() else int(steps[-1])
              for s in starts]
    n = len(ends)
    acc = ds["train_accuracy"].transpose("step", "task").values
    loss = ds["train_loss"].transpose("step", "task").values
    at = {int(s): i for i, s in enumerate(steps)}
    end_acc = np.array([acc[at[e], t] for t, e in enumerate(ends)])
    end_loss = np.array([loss[at[e], t] for t, e in enumerate(ends)])
    start_loss = np.array([loss[at[s], t] for t, s in enumerate(firsts)])
    chance = np.array(json.loads(ds.attrs.get("task_chance_json", "[]")) + [np.nan] * n)[:n]
    return classify(int(ds.attrs["diverged_step"]), end_acc, chance, start_loss, end_loss,
                    real_targets=ds.attrs.get("target", "labels") != "labels",
                    chance_margin=cfg["chance_margin"], min_loss_drop=cfg["min_loss_drop"])


def compute_metrics(ntk_path: str | Path, out: str | Path, *, metrics_cfg: dict[str, Any],
                    provenance: dict[str, str]) -> None:
    """Spectral norm, kernel distance to init, velocity, alignments and the alignment spectrum
    along `step`, per probe; loss and accuracy per task; the forgetting matrix. The studies
    derive their own measures from these (`ntkpipe.studies`)."""
    import xarray as xr

    from ntkpipe import metrics as m
    from ntkpipe.continual import backward_transfer, forgetting

    ds = store.open_netcdf(ntk_path)
    centered, kernel = metrics_cfg["centered"], metrics_cfg["kernel"]
    stack = _metric_kernels(ds, kernel)
    steps = ds["step"].values
    boundaries = json.loads(ds.attrs["boundaries_json"])[1:]  # task 1 starts at step 0
    probes = ds["probe"].values
    norm, dist, vel, align, target, top_align, from_boundary = (
        np.full(stack.shape[:2], np.nan) for _ in range(7))
    first_boundary = int(np.searchsorted(steps, boundaries[0])) if boundaries else None
    top = min(metrics_cfg["spectrum_top"], stack.shape[-1])
    eig_fraction, eig_align = (np.full(stack.shape[:2] + (top,), np.nan) for _ in range(2))
    for p in range(len(probes)):
        y = _targets(ds, p, kernel)
        values, eig_align[p] = m.eigen_alignment_stack(stack[p], y, top)  # one eigh per snapshot
        norm[p], top_align[p] = values[:, 0], eig_align[p, :, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            eig_fraction[p] = values / np.linalg.norm(stack[p], axis=(1, 2))[:, None]
        dist[p] = m.distances_to(stack[p], stack[p, 0], centered)
        if first_boundary is not None and first_boundary < len(steps) \
                and steps[first_boundary] == boundaries[0]:
            from_boundary[p] = m.distances_to(stack[p], stack[p, first_boundary], centered)
        vel[p] = m.kernel_velocity(stack[p], steps, centered)
        align[p] = m.alignments(stack[p], y, centered)
        target[p] = m.target_alignments(stack[p], y)
    ends = [b for b in boundaries] + [int(steps[-1])]  # last snapshot of each trained task
    ends = [int(steps[steps <= e][-1]) if (steps <= e).any() else int(steps[0]) for e in ends]
    trained = np.arange(1, len(ends) + 1)
    acc = ds["test_accuracy"].sel(step=ends).values  # (trained task, task)
    starts = json.loads(ds.attrs["boundaries_json"])
    last = int(ds.attrs.get("last_step", steps[-1]))
    task_steps = np.diff(np.array(starts + [last], dtype=float))[:len(trained)]
    converged = np.array(json.loads(ds.attrs.get("converged_json", "[]")), dtype=float)
    converged = np.concatenate([converged, np.full(len(trained), np.nan)])[:len(trained)]
    code, reason = _status(ds, ends, starts[:len(trained)], metrics_cfg["status"])
    pm = ("probe", "step")
    out_ds = xr.Dataset(
        {
            "spectral_norm": (pm, norm, {"long_name": "spectral norm ‖Θ_t‖₂ = λ_max"}),
            "kernel_distance": (pm, dist, {"long_name": "kernel distance S(Θ_0, Θ_t) = 1 − CKA",
                                           "units": "1"}),
            "kernel_velocity": (pm, vel, {"long_name": "kernel velocity S(Θ_t, Θ_t+dt)/dt",
                                          "units": "1/step"}),
            "kernel_alignment": (pm, align, {"long_name": "kernel alignment CKA(Θ_t, YYᵀ)",
                                             "units": "1"}),
            "boundary_distance": (pm, from_boundary, {
                "long_name": "kernel distance S(Θ_b, Θ_t) from the kernel at the first task "
                             "boundary", "units": "1"}),
            "target_alignment": (pm, target, {"long_name": "uncentred kernel-target alignment "
                                                           "yᵀΘy / (‖Θ‖_F ‖y‖²)", "units": "1"}),
            "top_eigenvector_alignment": (pm, top_align, {
                "long_name": "alignment of the top NTK eigenvector with the targets "
                             "(u₁ᵀy)² / ‖y‖²", "units": "1"}),
            "eigenvalue_fraction": (("probe", "step", "eigen"), eig_fraction, {
                "long_name": "leading NTK eigenvalues normalised by ‖Θ‖_F", "units": "1"}),
            "alignment_spectrum": (("probe", "step", "eigen"), eig_align, {
                "long_name": "eigenvector alignment spectrum a_i = (u_iᵀy)² / ‖y‖²",
                "units": "1"}),
            "test_loss": ds["test_loss"].variable, "test_accuracy": ds["test_accuracy"].variable,
            "train_loss": ds["train_loss"].variable,
            "train_accuracy": ds["train_accuracy"].variable,
            "task_steps": ("trained_task", task_steps, {
                "long_name": "optimiser steps each task ran"}),
            "task_converged": ("trained_task", converged, {
                "long_name": "1 if the task met its stopping rule, 0 if its epoch budget ran out "
                             "first (tasks of fixed length count as 1)"}),
            "accuracy_matrix": (("trained_task", "task"), acc,
                                {"long_name": "held-out accuracy on `task` after training "
                                              "on `trained_task` (forgetting matrix)"}),
            "backward_transfer": ((), backward_transfer(acc), {
                "long_name": "backward transfer BWT = mean over earlier tasks of the final minus "
                             "the just-learned accuracy (Lopez-Paz & Ranzato 2017)",
                "units": "1"}),
            "forgetting": ((), forgetting(acc), {
                "long_name": "average forgetting: mean over earlier tasks of the best minus the "
                             "final accuracy (Chaudhry et al. 2018)", "units": "1"}),
            "boundary_step": ("boundary", np.array(boundaries, dtype=np.int64),
                              {"long_name": "first step of each later task"}),
            "diverged_step": ((), int(ds.attrs["diverged_step"]),
                              {"long_name": "step whose loss was not finite (-1: none)"}),
            "run_status": ((), np.int8(code), {**status_attrs(), "reason": reason}),
        },
        coords={"step": ds["step"].variable, "phase": ds["phase"].variable,
                "epoch": ds["epoch"].variable, "probe": probes, "task": ds["task"].values,
                "trained_task": trained, "boundary": np.arange(1, len(boundaries) + 1),
                "eigen": np.arange(1, top + 1)},
    )
    out_ds.attrs.update(store.dataset_attrs("ntkpipe kernel metrics", provenance))
    for key in ("boundaries_json", "task_classes_json", "similarity_json",
                "normalisation_json", "stop_reasons_json"):
        out_ds.attrs[key] = ds.attrs.get(key, "{}")
    out_ds.attrs["metric_kernel"] = kernel
    out_ds.attrs["centered"] = int(centered)
    store.write_netcdf(out_ds, out)

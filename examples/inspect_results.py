"""Open the results with xarray, pick one width and regime, and plot the kernel velocity
around the task boundary for every run (seed, learning rate) of the class-incremental shift.

    python examples/inspect_results.py [results] [--width 256] [--regime lazy]
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ntkpipe.summary import open_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="results")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--regime", default="lazy")
    parser.add_argument("--out", default="velocity_around_boundary.png")
    args = parser.parse_args()

    # The summary (summary/metrics.nc) with every study's measures (summary/<study>.nc) merged
    # in. One entry per run along `run`; the sweep keys are coordinates along it, so picking runs
    # is a boolean mask. (`ntkpipe.summary.grid(ds, ("seed",), width=..., ...)` gives the
    # dense view instead, every other sweep key at its best-populated value.)
    ds = open_results(args.results)
    chosen = ((ds["width"] == args.width) & (ds["regime"] == args.regime)  # ds.shift is a method
              & (ds["shift"] == "conceptual") & (ds["shared_classes"] == 0) & (ds["n_tasks"] == 2))
    runs = ds.isel(run=chosen.values).sel(probe=1)  # the class-incremental shift, task-1 probes
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i in range(runs.sizes["run"]):
        one = runs.isel(run=i)
        velocity = one.kernel_velocity.dropna("step")
        if velocity.size == 0:
            continue
        label = f"seed {int(one.seed)}, lr {float(one.lr):g}"
        boundary = int(one.boundary_step.sel(boundary=1))
        ax.plot(velocity.step - boundary, velocity, marker=".", label=label)
        print(f"{label}: boundary at step {boundary}, velocity spike "
              f"{float(one.velocity_spike.sel(boundary=1)):.2f}× the pre-boundary median")
    ax.axvline(0, color="k", ls="--", lw=0.8)
    ax.set(xscale="symlog", yscale="log", xlabel="steps since task boundary",
           ylabel="kernel velocity", title=f"width {args.width}, {args.regime} regime")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

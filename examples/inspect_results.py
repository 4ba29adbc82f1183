"""Open the sweep summary with xarray, pick one width and regime, and plot the kernel velocity
around the task boundary for every seed.

    python examples/inspect_results.py [results/summary/metrics.nc] [--width 256] [--regime lazy]
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import xarray as xr  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", nargs="?", default="results/summary/metrics.nc")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--regime", default="lazy")
    parser.add_argument("--out", default="velocity_around_boundary.png")
    args = parser.parse_args()

    ds = xr.open_dataset(args.summary)
    # The class-incremental shift on task-1 probe data; every other sweep key at its first value.
    run = ds.sel(width=args.width, regime=args.regime, shift="conceptual", shared_classes=0,
                 n_tasks=2, probe=1)
    run = run.isel({d: 0 for d in ("dataset", "classes_per_task", "arch", "depth", "activation",
                                   "optimizer", "loss", "batch_size", "lr", "alpha")})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for seed in run.seed.values:
        one = run.sel(seed=seed)
        velocity = one.kernel_velocity.dropna("step")
        if velocity.size == 0:
            continue
        boundary = int(one.boundary_step.sel(boundary=1))
        ax.plot(velocity.step - boundary, velocity, marker=".", label=f"seed {seed}")
        print(f"seed {seed}: boundary at step {boundary}, velocity spike "
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

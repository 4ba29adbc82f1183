rule extract_ntk:
    """Empirical NTK at every snapshot of both phases, on each probe set."""
    input:
        data=lambda wc: f"{R}/data/{run_params(wc)['dataset']}.npz",
        split=lambda wc: f"{R}/splits/{split_of(wc)}/{wc.shift}/tasks.npz",
        phase1=f"{R}/runs/{{run}}/phase1_snapshots.pt",
        phase2=f"{R}/runs/{{run}}/{{shift}}/phase2_snapshots.pt",
    output:
        f"{R}/runs/{{run}}/{{shift}}/ntk.nc",
    log:
        f"{R}/logs/runs/{{run}}/{{shift}}/extract_ntk.log",
    benchmark:
        f"{R}/benchmarks/runs/{{run}}/{{shift}}/extract_ntk.tsv"
    # One thread: the default run's kernels are small, and jobs side by side use the cores
    # better; raise it for big probe sets with `--set-threads extract_ntk=8`.
    threads: 1
    resources:
        gpu=1,
    params:
        run=run_params,
        model=model_settings(),
        ntk=config["ntk"],
        code=ntksmk.source_hash("models", "ntk", "stages", "store", "train"),
    script:
        "../scripts/extract_ntk.py"

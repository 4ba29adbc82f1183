rule train_phase1:
    """Train task 1 to convergence; one run serves every shift built on it."""
    input:
        data=lambda wc: f"{R}/data/{run_params(wc)['dataset']}.npz",
        split=lambda wc: f"{R}/splits/{split_of(wc)}/task1.npz",
    output:
        checkpoint=f"{R}/runs/{{run}}/phase1.pt",
        snapshots=snapshot_file(f"{R}/runs/{{run}}/phase1_snapshots.pt"),
    log:
        f"{R}/logs/runs/{{run}}/phase1.log",
    benchmark:
        f"{R}/benchmarks/runs/{{run}}/phase1.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        gpu=1,
    params:
        run=run_params,
        train=phase1_settings,
        model=model_settings,
        code=ntksmk.code_hash("ntkpipe.stages.training"),
    script:
        "../scripts/train_phase1.py"


rule train_phase2:
    """Continue from the phase-1 checkpoint on tasks 2..n."""
    input:
        data=lambda wc: f"{R}/data/{run_params(wc)['dataset']}.npz",
        split=tasks_file,
        checkpoint=f"{R}/runs/{{run}}/phase1.pt",
    output:
        checkpoint=f"{R}/runs/{{run}}/{{shift}}/phase2.pt",
        snapshots=snapshot_file(f"{R}/runs/{{run}}/{{shift}}/phase2_snapshots.pt"),
    log:
        f"{R}/logs/runs/{{run}}/{{shift}}/phase2.log",
    benchmark:
        f"{R}/benchmarks/runs/{{run}}/{{shift}}/phase2.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        gpu=1,
    params:
        run=phase2_run,
        train=phase2_settings,
        model=model_settings,
        code=ntksmk.code_hash("ntkpipe.stages.training"),
    script:
        "../scripts/train_phase2.py"

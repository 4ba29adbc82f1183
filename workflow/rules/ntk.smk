rule extract_ntk:
    """Empirical NTK at every snapshot of both phases, on each probe set."""
    input:
        unpack(snapshot_inputs),
    output:
        f"{R}/runs/{{run}}/{{shift}}/ntk.nc",
    log:
        f"{R}/logs/runs/{{run}}/{{shift}}/extract_ntk.log",
    benchmark:
        f"{R}/benchmarks/runs/{{run}}/{{shift}}/extract_ntk.tsv"
    conda:
        CONDA_ENV
    # One thread: the default run's kernels are small, and jobs side by side use the cores
    # better; raise it for big probe sets with `--set-threads extract_ntk=8`.
    threads: 1
    resources:
        gpu=1,
    params:
        run=run_params,
        model=model_settings,
        ntk=ntk_settings,
        code=ntksmk.code_hash("ntkpipe.stages.kernels"),
    script:
        "../scripts/extract_ntk.py"


rule sharpness:
    """Edge of stability: the sharpness measured in training, the full training-subset NTK
    (Gauss–Newton sharpness, target alignment, eigenvector alignment) at every snapshot."""
    input:
        unpack(snapshot_inputs),
    output:
        f"{R}/runs/{{run}}/{{shift}}/sharpness.nc",
    log:
        f"{R}/logs/runs/{{run}}/{{shift}}/sharpness.log",
    benchmark:
        f"{R}/benchmarks/runs/{{run}}/{{shift}}/sharpness.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        gpu=1,
    params:
        run=run_params,
        model=model_settings,
        train=lambda wc: {**lr_settings(wc), "momentum": config["train"]["momentum"]},
        sharpness=config["analysis"]["sharpness"],
        code=ntksmk.code_hash("ntkpipe.stages.analyses"),
    script:
        "../scripts/sharpness.py"


rule train_kernel:
    """Feature evolution: task 1's training-set kernel at every phase-1 snapshot (alignment,
    norm, per-layer per-output-block alignments), the traced NTK and the outputs at its ends."""
    input:
        data=lambda wc: f"{R}/data/{run_params(wc)['dataset']}.npz",
        split=lambda wc: f"{R}/splits/{split_of(wc)}/task1.npz",
        phase1=f"{R}/runs/{{run}}/phase1_snapshots.pt",
    output:
        f"{R}/runs/{{run}}/train_kernel.nc",
    log:
        f"{R}/logs/runs/{{run}}/train_kernel.log",
    benchmark:
        f"{R}/benchmarks/runs/{{run}}/train_kernel.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        gpu=1,
    params:
        run=run_params,
        model=model_settings,
        train=lr_settings,
        ntk={k: config["ntk"][k] for k in ("dtype", "max_memory_gb")},
        settings={"block_subset": config["analysis"]["train_kernel"]["block_subset"]},
        code=ntksmk.code_hash("ntkpipe.stages.analyses"),
    script:
        "../scripts/train_kernel.py"

rule prepare_data:
    """Decode and normalise a dataset once; every run reads this cache."""
    input:
        dataset_files,
    output:
        f"{R}/data/{{dataset}}.npz",
    log:
        f"{R}/logs/prepare_data/{{dataset}}.log",
    conda:
        CONDA_ENV
    params:
        root=config["dataset"]["root"],
        download=config["dataset"]["download"],
        image_size=config["dataset"]["image_size"],
        custom=dataset_custom,
        code=ntksmk.code_hash("ntkpipe.stages.data"),
    script:
        "../scripts/prepare_data.py"


rule split_task1:
    """Task 1 of a split: shared by every shift built on it."""
    input:
        data=lambda wc: f"{R}/data/{ntksweep.parse_id(wc.split, ntksweep.SPLIT_KEYS)['dataset']}.npz",
    output:
        f"{R}/splits/{{split}}/task1.npz",
    log:
        f"{R}/logs/splits/{{split}}/task1.log",
    conda:
        CONDA_ENV
    params:
        split=lambda wc: {**split_settings(), **split_wildcards(wc)},
        code=ntksmk.code_hash("ntkpipe.stages.data"),
    script:
        "../scripts/split.py"


rule split_tasks:
    """The whole task sequence of a shift (task 1 identical to task1.npz by construction)."""
    input:
        data=lambda wc: f"{R}/data/{ntksweep.parse_id(wc.split, ntksweep.SPLIT_KEYS)['dataset']}.npz",
    output:
        f"{R}/splits/{{split}}/{{tasks}}/tasks.npz",
    log:
        f"{R}/logs/splits/{{split}}/{{tasks}}/tasks.log",
    conda:
        CONDA_ENV
    params:
        split=lambda wc: {
            **split_settings(
                **{
                    k: v
                    for k, v in ntksweep.parse_id(wc.tasks, ntksweep.TASK_KEYS).items()
                    if k != "shift"
                }
            ),
            **split_wildcards(wc),
        },
        code=ntksmk.code_hash("ntkpipe.stages.data"),
    script:
        "../scripts/split.py"

# Config validation, run table and path helpers. Only light imports here: every job (and every
# SLURM job) re-parses the Snakefile.
import os
import sys

import ntkpipe.config as ntkconfig
import ntkpipe.custom as ntkcustom
import ntkpipe.smk as ntksmk
import ntkpipe.studies as ntkstudies
import ntkpipe.sweep as ntksweep

try:
    _valid = ntkconfig.validate(config)  # canonical: keys sorted, numbers normalised
except ntkconfig.ConfigError as err:
    sys.exit(f"ntkpipe: invalid config: {err}")
config.clear()  # update() alone would keep the keys in the order they were written
config.update(_valid)

R = config["results"]
try:  # your own models and datasets: imported and run once per change, before any job
    for _line in ntkcustom.check(config, ntksweep.all_points(config), os.path.join(R, ".checks")):
        print(f"ntkpipe: checked {_line}", file=sys.stderr)
except ntkcustom.InputError as err:
    sys.exit(f"ntkpipe: {err}")
# every job's environment under --software-deployment-method conda; the env holds the
# dependencies and the jobs import ntkpipe from this checkout's src/ (where an install of it
# exists, as in `make install`'s venv, it is this same src/)
CONDA_ENV = os.path.join(workflow.basedir, "envs", "ntkpipe.yaml")
ntksmk.export_source_path(workflow.basedir)
STUDIES = ntkstudies.load_all(config["studies"])
STUDY = {study.name: study for study in STUDIES}
STUDY_SPECS = {study.name: spec for study, spec in zip(STUDIES, config["studies"])}


wildcard_constraints:
    run=ntksweep.id_regex(ntksweep.PHASE1_KEYS),
    shift=ntksweep.id_regex(ntksweep.SHIFT_KEYS),
    split=ntksweep.id_regex(ntksweep.SPLIT_KEYS),
    tasks=ntksweep.id_regex(ntksweep.TASK_KEYS),
    dataset="[A-Za-z0-9_.:-]+",
    study="|".join(STUDY_SPECS),


RUNS = sorted(set(ntksweep.iter_runs(config)))
ANALYSES = ntksweep.run_analyses(config)  # {(run, shift): analyses its sweeps turn on}
PHASE1_ANALYSES = {}
for (_run, _shift), _names in ANALYSES.items():
    PHASE1_ANALYSES.setdefault(_run, set()).update(_names)
METRICS = [f"{R}/runs/{run}/{shift}/metrics.nc" for run, shift in RUNS]
OUT = ntksweep.output_root(config)  # summary, scorecard, figures (a selection: their own)
SUMMARY = f"{OUT}/summary/metrics.nc"
_TURNED_ON = {name for names in ANALYSES.values() for name in names}
STUDY_FIGURES = {
    study.name: study.applicable(ntksweep.all_points(config), _TURNED_ON) for study in STUDIES
}
FIGURES = [f"{OUT}/figures/{name}.png" for names in STUDY_FIGURES.values() for name in names]


def run_params(wildcards):
    """Phase-1 parameters named by the {run} wildcard."""
    return ntksweep.parse_id(wildcards.run, ntksweep.PHASE1_KEYS)


def shift_params(wildcards):
    """Phase-2 parameters named by the {shift} wildcard."""
    return ntksweep.parse_id(wildcards.shift, ntksweep.SHIFT_KEYS)


def split_of(wildcards):
    """The split id ({dataset, classes, seed}) a run trains on."""
    return ntksweep.split_id(run_params(wildcards))


def tasks_file(wildcards):
    """The task sequence a (run, shift) trains on, shared by every strategy."""
    return f"{R}/splits/{split_of(wildcards)}/{ntksweep.tasks_id(wildcards.shift)}/tasks.npz"


def phase2_run(wildcards):
    """Phase 2's parameters: the run's and its strategy."""
    return {**run_params(wildcards), "strategy": shift_params(wildcards)["strategy"]}


def split_wildcards(wildcards):
    """The {split} wildcard's classes_per_task and seed (the dataset picks the input file)."""
    params = ntksweep.parse_id(wildcards.split, ntksweep.SPLIT_KEYS)
    return {k: v for k, v in params.items() if k != "dataset"}


def split_settings(n_tasks=1, shared_classes=0, alpha=0.0):
    """Everything besides the wildcards that decides a split."""
    return {
        "order": config["dataset"]["class_order"],
        "train_per_task": config["dataset"]["train_per_task"],
        "with_replacement": config["dataset"]["with_replacement"],
        "probe_size": config["probe"]["size"],
        "probe_tasks": [t for t in config["probe"]["tasks"] if t <= n_tasks] or [1],
        "imbalance": config["frequency"]["imbalance"],
        "n_tasks": n_tasks,
        "shared_classes": shared_classes,
        "alpha": alpha,
    }


def analyses_of(wildcards):
    """The analyses of a (run, shift)."""
    return ANALYSES.get((wildcards.run, wildcards.shift), [])


def snapshot_every(analyses):
    """Extra snapshots every k steps where sharpness is measured (0: none)."""
    return config["analysis"]["sharpness"]["snapshot_every"] if "sharpness" in analyses else 0


def sharpness_watch(analyses):
    """How a run with the sharpness analysis measures it while it trains (None: it does not)."""
    if "sharpness" not in analyses:
        return None
    s = config["analysis"]["sharpness"]
    return {k: s[k] for k in ("every", "dense", "subset", "top", "tolerance")}


def snapshot_file(path):
    """A weight-snapshot output: kept, or temp() with `storage.keep_snapshots: false`."""
    return path if config["storage"]["keep_snapshots"] else temp(path)


def lr_settings(wildcards):
    """What turns a run's lr into the learning rate it trains with: nothing but its lr
    outside the lazy regime, so the lazy scaling retrains lazy runs only."""
    if run_params(wildcards)["regime"] != "lazy":
        return {}
    t = config["train"]
    settings = {
        "lazy_lr_scale": t["lazy_lr_scale"],
        "lazy_width_exponent": t["lazy_width_exponent"],
    }
    if t["lazy_width_exponent"]:  # the reference width matters only with width scaling
        settings["lazy_reference_width"] = t["lazy_reference_width"]
    return settings


def phase1_stop(wildcards):
    """Phase 1's stopping rule for this run, resolved from the per-loss and per-optimizer
    maps (a gd limit or an MSE target does not retrain cross-entropy SGD runs)."""
    from ntkpipe.stages.training import max_epochs, target_loss

    p1, run = config["train"]["phase1"], run_params(wildcards)
    stop = {
        "min_epochs": p1["min_epochs"],
        "target_loss": target_loss(p1, run["loss"]),
        "max_epochs": max_epochs(p1, run["optimizer"]),
    }
    if stop["target_loss"] is None:  # the accuracy rule: an MSE target makes these moot
        stop.update({k: p1[k] for k in ("target_accuracy", "plateau_epochs", "loss_tolerance")})
    else:
        stop["target_accuracy"] = p1["target_accuracy"]
    return stop


def phase1_settings(wildcards):
    """Training settings phase 1 depends on (phase-2 settings excluded: no retraining)."""
    t = config["train"]
    return {
        "momentum": t["momentum"],
        **lr_settings(wildcards),
        "phase1": phase1_stop(wildcards),
        # the post-boundary grid is phase 2's: changing it must not retrain phase 1
        "snapshots": {k: t["snapshots"][k] for k in ("log_points", "dense_steps")},
        "snapshot_every": snapshot_every(PHASE1_ANALYSES.get(wildcards.run, ())),
        "sharpness": sharpness_watch(PHASE1_ANALYSES.get(wildcards.run, ())),
        "checkpoint_every": t["checkpoint_every"],
    }


def strategy_settings(wildcards):
    """The settings of a run's continual-learning strategy (none for finetune): changing the
    replay buffer retrains the replay runs only."""
    name = shift_params(wildcards)["strategy"]
    return config["continual"].get(name, {})


def phase2_settings(wildcards):
    """Training settings phase 2 depends on."""
    t = config["train"]
    return {
        "strategy": strategy_settings(wildcards),
        "momentum": t["momentum"],
        **lr_settings(wildcards),
        "phase2": t["phase2"],
        "snapshots": t["snapshots"],
        "snapshot_every": snapshot_every(analyses_of(wildcards)),
        "checkpoint_every": t["checkpoint_every"],
    }


def ntk_settings(wildcards):
    """NTK settings of a run: the specialization analysis adds the per-output and per-layer
    kernels to the configured ones."""
    kernels = list(config["ntk"]["kernels"])
    if "specialization" in analyses_of(wildcards):
        kernels += [k for k in ("per_output", "per_layer") if k not in kernels]
    return {**config["ntk"], "kernels": kernels}


def model_settings(wildcards):
    """What builds a run's network besides its wildcards: a custom factory with its kwargs and
    code hash (editing the factory retrains), the ViT shape for arch vit."""
    arch = run_params(wildcards)["arch"]
    out = {"bias": config["model"]["bias"], "bias_std": config["model"]["bias_std"]}
    if arch == "vit":
        out["vit"] = config["model"]["vit"]
    spec = ntkcustom.model_spec(config, arch)
    if spec is not None:
        out["custom"] = {**spec, "code": ntkcustom.code_hash(spec["factory"])}
    return out


def dataset_custom(wildcards):
    """A custom dataset's loader, options and code hash (None: a built-in dataset)."""
    spec = ntkcustom.dataset_spec(config, wildcards.dataset)
    if spec is None:
        return None
    return {**spec, "code": ntkcustom.code_hash(spec["loader"], "loader")}


# Per-run files a study's measures may read, by kind.
_RUN_FILES = {
    "metrics": "{run}/{shift}/metrics.nc",
    "ntk": "{run}/{shift}/ntk.nc",
    "sharpness": "{run}/{shift}/sharpness.nc",
    "train_kernel": "{run}/train_kernel.nc",
}


def study_run_files(name):
    """{file kind: [[run, shift, path], ...]} of the per-run files a study's measures read:
    every run's, or those of the runs whose sweeps turn the named analysis on."""
    out = {}
    for kind, analysis in STUDY[name].run_files.items():
        out[kind] = [
            [run, shift, f"{R}/runs/{_RUN_FILES[kind].format(run=run, shift=shift)}"]
            for run, shift in RUNS
            if analysis is None or analysis in ANALYSES.get((run, shift), ())
        ]
    return out


def study_measure_inputs(wildcards):
    """The summary and the per-run files of a study's measures."""
    files = study_run_files(wildcards.study)
    return {"summary": SUMMARY, **{kind: [row[2] for row in rows] for kind, rows in files.items()}}


def study_inputs(study):
    """The summary and a study's measures (if it has any); `study` is a name or wildcards."""
    name = study if isinstance(study, str) else study.study
    inputs = {"summary": SUMMARY}
    if STUDY[name].measures is not None:
        inputs["measures"] = f"{OUT}/summary/{name}.nc"
    return inputs


def study_code(name):
    """Code hash of a study: its module and what it imports, and the study stages."""
    return ntksmk.code_hash(_study_module(STUDY_SPECS[name]), "ntkpipe.stages.studies")


def _study_module(spec):
    return f"ntkpipe.studies.{spec}" if spec in ntkstudies.BUILTIN else spec


def snapshot_inputs(wildcards):
    """Data, split and the snapshot files of a run (no phase 2 for a single task)."""
    run = f"{R}/runs/{wildcards.run}"
    inputs = {
        "data": f"{R}/data/{run_params(wildcards)['dataset']}.npz",
        "split": tasks_file(wildcards),
        "phase1": f"{run}/phase1_snapshots.pt",
    }
    if shift_params(wildcards)["n_tasks"] > 1:
        inputs["phase2"] = f"{run}/{wildcards.shift}/phase2_snapshots.pt"
    return inputs


def dataset_files(wildcards):
    """The on-disk files a dataset cache is decoded from, as inputs: replacing one rebuilds
    the cache and everything after it. ImageFolder trees give their class folders (a file
    added, removed or renamed changes its folder) rather than every image; digits is embedded;
    a dataset still to be downloaded has none yet."""
    from pathlib import Path

    custom = ntkcustom.dataset_spec(config, wildcards.dataset)
    if custom is not None:
        return custom["files"]
    root = config["dataset"]["root"]
    if wildcards.dataset == "digits" or not root or config["dataset"]["download"]:
        return []
    root = Path(root)
    if not root.is_dir():
        return []  # the job names what is missing and how to get it
    if wildcards.dataset == "imagefolder":
        return sorted(str(p) for p in root.rglob("*") if p.is_dir())
    return sorted(str(p) for p in root.rglob("*") if p.is_file())

"""The pipeline's stages as functions of files. Each reads its inputs, computes with the pure
modules, and writes its outputs atomically with provenance. The workflow scripts are thin
adapters to these; a notebook can call them directly.

One module per stage, so a rule's code hash covers only the stage it runs: editing the
metrics stage reruns metrics, not training. torch is imported inside the stages that train or
compute kernels only: the split and metrics jobs then start without it (its import costs
~1.5 s per job, and a sweep has hundreds of jobs).
"""

from ntkpipe.stages.analyses import measure_sharpness, train_kernel
from ntkpipe.stages.data import load_data, load_split, make_split, prepare_data
from ntkpipe.stages.kernels import extract_ntk, task_scores
from ntkpipe.stages.measures import compute_metrics
from ntkpipe.stages.studies import study_figures, study_measures, study_scorecard
from ntkpipe.stages.training import make_model, target_loss, train_phase1, train_phase2

__all__ = ["compute_metrics", "extract_ntk", "load_data", "load_split", "make_model",
           "make_split", "measure_sharpness", "prepare_data", "study_figures", "study_measures",
           "study_scorecard", "target_loss", "task_scores", "train_kernel", "train_phase1",
           "train_phase2"]

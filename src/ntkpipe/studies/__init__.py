"""The registry of studies. Config key `studies` lists the ones a run checks: a built-in name
(`reactivation`, `edge_of_stability`, `feature_evolution`, `continual`), an importable module
(`mypkg.mystudy`) or a Python file (`studies/mystudy.py`, relative to the working directory),
each defining `STUDY = Study(...)` (see `ntkpipe.studies.base`). The pipeline loops over this
list and knows no study by name.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from ntkpipe.errors import InputError
from ntkpipe.studies.base import Figure, Study, Threshold

BUILTIN = ("reactivation", "edge_of_stability", "feature_evolution", "continual")

__all__ = ["BUILTIN", "Figure", "Study", "StudyError", "Threshold", "load", "load_all",
           "thresholds"]


class StudyError(InputError, ValueError):
    """A study named in the config cannot be loaded or is malformed; the message says why."""


def _import(spec: str):
    if spec in BUILTIN:
        return importlib.import_module(f"ntkpipe.studies.{spec}")
    if spec.endswith(".py"):
        path = Path(spec).resolve()
        if not path.is_file():
            raise StudyError(f"study file {spec} does not exist")
        import hashlib

        from ntkpipe.custom import import_file

        stem = re.sub(r"[^0-9A-Za-z_]", "_", path.stem)  # one module per file, named for it
        return import_file(path, f"ntkpipe_user_study_{stem}_"
                                 f"{hashlib.sha1(str(path).encode()).hexdigest()[:8]}")
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", spec):
        raise StudyError(f"study {spec!r} is neither a built-in ({', '.join(BUILTIN)}), a "
                         "module path (package.module) nor a .py file")
    try:
        return importlib.import_module(spec)
    except ImportError as err:
        raise StudyError(f"study {spec!r} does not import ({err}); is its package on "
                         "PYTHONPATH, or give the .py file's path") from None


@lru_cache(maxsize=None)
def load(spec: str) -> Study:
    """The study a config entry names, with its source file recorded."""
    module = _import(spec)
    study = getattr(module, "STUDY", None)
    if not isinstance(study, Study):
        raise StudyError(f"study {spec!r} ({module.__file__}) defines no STUDY = Study(...)")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", study.name):
        raise StudyError(f"study {spec!r}: its name {study.name!r} must be lower-case letters, "
                         "digits and underscores (it names files)")
    return replace(study, source=str(Path(module.__file__).resolve()))


def load_all(specs: list[str] | tuple[str, ...] | None) -> list[Study]:
    """The studies of a config (None: the built-ins), checked for clashing names."""
    studies = [load(spec) for spec in (specs if specs is not None else BUILTIN)]
    seen: dict[str, str] = {}
    figures: dict[str, str] = {}
    for study in studies:
        if study.name in seen:
            raise StudyError(f"two studies are named {study.name!r}")
        seen[study.name] = study.name
        for figure in study.figures:
            if figure.name in figures:
                raise StudyError(f"figure {figure.name!r} of study {study.name!r} is also a "
                                 f"figure of {figures[figure.name]!r}")
            figures[figure.name] = study.name
            if not Path(study.caption_path(figure)).is_file():
                raise StudyError(f"study {study.name!r}: caption {study.caption_path(figure)} "
                                 f"of figure {figure.name!r} does not exist")
    return studies


def thresholds(studies: list[Study]) -> dict[str, Threshold]:
    """Every scorecard threshold the studies read, by name; a name two studies declare is an
    error (thresholds share the config's `scorecard` mapping)."""
    out: dict[str, Threshold] = {}
    owner: dict[str, str] = {}
    for study in studies:
        for name, threshold in study.thresholds.items():
            if name in out:
                raise StudyError(f"scorecard threshold {name!r} is declared by both "
                                 f"{owner[name]!r} and {study.name!r}")
            out[name], owner[name] = threshold, study.name
    return out

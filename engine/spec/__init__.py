"""The spec layer: load a Maestro study spec, validate it, and expand it into a StudyGraph.

``load_study`` is the one call the runtime and CLI need; ``load_spec`` stops after validation;
``make_safe_path`` and ``study_dir_for`` expose Maestro's naming rules; ``StudyGraph`` and its
parts (in :mod:`engine.spec.graph`) are the contract with the runtime.
"""

from __future__ import annotations

from engine.spec.expand import load_study
from engine.spec.graph import GitDependency, PathDependency, Resources, StepInstance, StudyGraph
from engine.spec.loader import load_spec
from engine.spec.model import Spec
from engine.spec.naming import make_safe_path, study_dir_for
from engine.spec.pgen import ParameterGenerator

__all__ = [
    "GitDependency",
    "ParameterGenerator",
    "PathDependency",
    "Resources",
    "Spec",
    "StepInstance",
    "StudyGraph",
    "load_spec",
    "load_study",
    "make_safe_path",
    "study_dir_for",
]

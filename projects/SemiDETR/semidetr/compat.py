"""Probes of the installed detectron2 snapshot.

This project runs on detectron2's Python code only: the official repository's build and the PyPI
re-packaging `sal-detectron2` (whose compiled `_C` cannot load on Python 3.11 and is removed by
tools/setup_env.sh). Everything that depends on what a given snapshot provides is decided here, once,
so a different snapshot fails loudly at import instead of deep inside a training run.
"""
import importlib
import inspect

import detectron2

__all__ = ["DETECTRON2_VERSION", "check_detectron2"]

DETECTRON2_VERSION = detectron2.__version__


def check_detectron2() -> None:
    """Raise a clear error if the installed detectron2 lacks a feature this project relies on."""
    from detectron2.evaluation import COCOEvaluator

    # `detectron2.engine.launch` is shadowed by the function of the same name in the package namespace.
    launch_module = importlib.import_module("detectron2.engine.launch")

    problems = []
    if "use_fast_impl" not in inspect.signature(COCOEvaluator.__init__).parameters:
        problems.append("COCOEvaluator(use_fast_impl=...) is missing")
    worker_source = inspect.getsource(launch_module._distributed_worker)
    if "GLOO" not in worker_source.upper():
        problems.append("detectron2.engine.launch cannot start CPU (gloo) process groups")
    if problems:
        raise ImportError(
            f"detectron2 {DETECTRON2_VERSION} at {detectron2.__file__} is not supported: "
            + "; ".join(problems) + ". Re-run tools/setup_env.sh to install a supported snapshot.")

#!/usr/bin/env python
"""Installs the `semidetr` package (Semi-DETR for Detectron2). Pure Python: no compiler needed.

The heavy dependencies (torch, torchvision, detectron2) are installed by `tools/setup_env.sh`, because
detectron2 is not on PyPI; they are therefore not listed in `install_requires`.
"""
from setuptools import find_packages, setup

setup(
    name="semidetr",
    version="0.1.0",
    description="Semi-DETR (CVPR 2023): semi-supervised object detection with DETR-family detectors, for Detectron2",
    package_dir={"": "projects/SemiDETR"},
    packages=find_packages(where="projects/SemiDETR"),
    python_requires=">=3.10",
    install_requires=["fvcore", "scipy", "scikit-learn", "pycocotools", "opencv-python-headless"],
)

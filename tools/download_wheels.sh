#!/usr/bin/env bash
# Download (and, for the two sdist-only packages, build) every wheel the project needs besides torch and
# torchvision, for a machine without network whose torch is preinstalled (README, section "GPU").
#
#   bash tools/download_wheels.sh DIR [PYTHON_VERSION]     # default 3.12; run where PyPI is reachable
#   # carry DIR and this checkout to the GPU machine, then there:
#   bash tools/install_wheels.sh DIR                        # pip install --no-index --find-links DIR ...
#
# Binary wheels are fetched for CPython PYTHON_VERSION on manylinux x86_64; fvcore, iopath and
# antlr4-python3-runtime 4.9 (omegaconf's) exist only as source archives on PyPI and are pure Python, so
# they are built into py3-none-any wheels here (no compiler). detectron2 comes from PyPI's re-packaging sal-detectron2 (a cp310 wheel whose Python code
# runs on 3.11+; its compiled _C, which this project does not use, is removed on install).
set -euo pipefail
DIR="${1:?usage: bash tools/download_wheels.sh DIR [PYTHON_VERSION]}"
PYVER="${2:-3.12}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
PIP=("$PY" -m pip --disable-pip-version-check)
mkdir -p "$DIR"
# The pins of tools/setup_env.sh (without torch / torchvision) and the dependencies they pull in.
PINS=(
  "scipy==1.17.1" "scikit-learn==1.9.1" "pycocotools==2.0.11" "opencv-python-headless==5.0.0.93"
  "matplotlib==3.11.2" "tensorboard==2.21.0" "pytest==9.2.0" "yacs==0.1.8" "PyYAML==6.0.3"
  "tabulate==0.10.0" "termcolor==3.3.0" "cloudpickle==3.1.2" "omegaconf==2.3.1" "hydra-core==1.3.8"
  "Pillow==13.0.0" "tqdm==4.70.1" "portalocker" "numpy"
)
# Source-only on PyPI and pure Python: built here first, then found in DIR by the download's resolver.
SDIST_ONLY=("fvcore==0.1.5.post20221221" "iopath==0.1.10" "antlr4-python3-runtime==4.9.3")
"${PIP[@]}" wheel -q --no-deps -w "$DIR" "${SDIST_ONLY[@]}"
"${PIP[@]}" download -q --only-binary=:all: --implementation cp --python-version "$PYVER" \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --find-links "$DIR" -d "$DIR" "${PINS[@]}" "${SDIST_ONLY[@]}"
"${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$DIR" "sal-detectron2==0.7.2"
echo "[download_wheels] $(ls "$DIR" | wc -l) wheels in $DIR for Python $PYVER"

#!/usr/bin/env bash
# Install the project's dependencies from a folder of wheels (tools/download_wheels.sh) into the current
# Python, on top of its preinstalled torch and torchvision, without network (README, section "GPU").
#
#   bash tools/install_wheels.sh DIR          # PYTHON=/path/to/python to choose the interpreter
#
# torch and torchvision are never installed or upgraded here: the wheels do not depend on them, and
# detectron2 and this project are installed with --no-deps.
set -euo pipefail
DIR="${1:?usage: bash tools/install_wheels.sh DIR}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
PIP=("$PY" -m pip --disable-pip-version-check)
"$PY" -c "import torch, torchvision; print(f'[install_wheels] keeping torch {torch.__version__}, torchvision {torchvision.__version__}')"
"${PIP[@]}" install -q --no-index --find-links "$DIR" \
  scipy scikit-learn pycocotools opencv-python-headless matplotlib tensorboard pytest yacs PyYAML tabulate \
  termcolor cloudpickle omegaconf hydra-core Pillow tqdm portalocker fvcore iopath antlr4-python3-runtime
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"${PIP[@]}" install -q --no-index --find-links "$DIR" --no-deps --only-binary=:all: --python-version 3.10 \
  --target "$SITE" --upgrade sal-detectron2
# A cp310 extension cannot load on 3.11+; the project does not use detectron2._C.
find "$SITE/detectron2" -maxdepth 1 -name '_C.cpython-310-*.so' -delete
"${PIP[@]}" install -q --no-index --no-deps --no-build-isolation -e "$ROOT"
"$PY" -c "import detectron2, semidetr, torch; print(f'[install_wheels] detectron2 {detectron2.__version__}, torch {torch.__version__}, semidetr from {semidetr.__file__}')"

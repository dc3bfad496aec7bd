#!/usr/bin/env bash
# One-command, idempotent set-up: creates .venv (Python 3.11) with pinned versions and installs
# `semidetr` in editable mode. Re-running it is cheap: a stamp records the last successful set-up and
# the script exits early when nothing it depends on has changed.
#
# detectron2 is installed from the official repository when GitHub is reachable; otherwise from the
# PyPI re-packaging `sal-detectron2==0.7.2` (detectron2 main, about 2023; a cp310 wheel whose Python
# code runs on 3.11). Its compiled `_C` library is removed: nothing in this project depends on it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY_VERSION="${SEMIDETR_PYTHON:-python3.11}"
TORCH_PIN="torch==2.14.1"
TORCHVISION_PIN="torchvision==0.29.1"
DETECTRON2_GIT="https://github.com/facebookresearch/detectron2.git"
DETECTRON2_PYPI="sal-detectron2==0.7.2"
# Pure-Python and binary dependencies (opencv headless: no X libraries on servers and CI).
PIP_PINS=(
  "fvcore==0.1.5.post20221221" "iopath==0.1.10" "scipy==1.17.1" "scikit-learn==1.9.1"
  "pycocotools==2.0.11" "opencv-python-headless==5.0.0.93" "matplotlib==3.11.2" "tensorboard==2.21.0"
  "pytest==9.2.0" "yacs==0.1.8" "PyYAML==6.0.3" "tabulate==0.10.0" "termcolor==3.3.0"
  "cloudpickle==3.1.2" "omegaconf==2.3.1" "hydra-core==1.3.8" "Pillow==13.0.0" "tqdm==4.70.1"
  "ruff==0.17.5"  # the linter of tools/test.sh (rules in ruff.toml)
)

# Opt-in extras, installed on top of the default set-up and outside its stamp (the stamp records the
# default set-up only; neither the test suite nor training needs an extra):
#   SEMIDETR_EXTRAS=benchmark bash tools/setup_env.sh
#     benchmark: Hugging Face `transformers` (DeformableDetrForObjectDetection, random init, nothing
#                downloaded), the reference detector of tools/benchmark.py, with its direct dependencies.
BENCHMARK_PINS=(
  "transformers==5.23.0" "huggingface_hub==2.4.0" "tokenizers==0.23.3" "safetensors==0.8.0" "regex==2026.11.15"
)
install_extras() {
  local extras="${SEMIDETR_EXTRAS:-}" extra
  for extra in ${extras//,/ }; do
    case "$extra" in
      benchmark)
        if "$VENV/bin/python" -c "import sys, transformers; sys.exit(transformers.__version__ != '${BENCHMARK_PINS[0]#*==}')" 2>/dev/null; then
          echo "[setup_env] extra 'benchmark': ${BENCHMARK_PINS[0]} already installed"
        else
          echo "[setup_env] extra 'benchmark': installing ${BENCHMARK_PINS[*]}"
          "$VENV/bin/python" -m pip --disable-pip-version-check install -q "${BENCHMARK_PINS[@]}"
        fi
        ;;
      *)
        echo "[setup_env] unknown SEMIDETR_EXTRAS entry '$extra' (known: benchmark)" >&2
        exit 1
        ;;
    esac
  done
}

STAMP="$VENV/.semidetr-setup-$( (cat "$0" setup.py) | sha1sum | cut -c1-12)"
if [[ -f "$STAMP" ]] && "$VENV/bin/python" -c "import detectron2, semidetr" 2>/dev/null; then
  echo "[setup_env] .venv is up to date ($(cat "$STAMP"))"
  install_extras
  exit 0
fi

# torch's CUDA build makes the environment about 6 GB: say so before pip fails half-way with "No space left".
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  NEEDED_GB=8
  FREE_GB=$(( $(df -Pk "$ROOT" | awk 'NR==2 {print $4}') / 1024 / 1024 ))
  if (( FREE_GB < NEEDED_GB )); then
    echo "[setup_env] $ROOT's disk has ${FREE_GB} GB free; the environment ($VENV, torch's CUDA build) needs" \
         "about ${NEEDED_GB} GB. Free some space (old run directories, /tmp/pytest-of-$(id -un)) and re-run." >&2
    exit 1
  fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup_env] creating $VENV with $PY_VERSION"
  "$PY_VERSION" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip setuptools wheel
"${PIP[@]}" install -q "$TORCH_PIN" "$TORCHVISION_PIN"
"${PIP[@]}" install -q "${PIP_PINS[@]}"

SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if "$PY" -c "import detectron2" 2>/dev/null; then
  D2_SOURCE="already installed ($("$PY" -c 'import detectron2; print(detectron2.__version__)'))"
elif timeout 20 git ls-remote "$DETECTRON2_GIT" HEAD >/dev/null 2>&1 \
    && "${PIP[@]}" install -q --no-build-isolation "git+$DETECTRON2_GIT"; then
  D2_SOURCE="official repository $DETECTRON2_GIT"
else
  echo "[setup_env] GitHub unreachable (or the build failed): installing $DETECTRON2_PYPI"
  "${PIP[@]}" install -q --no-deps --only-binary=:all: --python-version 3.10 \
      --target "$SITE" --upgrade "$DETECTRON2_PYPI"
  D2_SOURCE="PyPI re-packaging $DETECTRON2_PYPI"
fi
# A cp310 extension cannot load on 3.11; delete it so nothing can try. (An official build keeps its own.)
find "$SITE/detectron2" -maxdepth 1 -name '_C.cpython-310-*.so' -delete

"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
"$PY" - <<'PYEOF'
import detectron2, torch, torchvision, semidetr
print(f"[setup_env] torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"detectron2 {detectron2.__version__} at {detectron2.__file__}")
PYEOF
echo "[setup_env] detectron2 from: $D2_SOURCE"
echo "detectron2 from $D2_SOURCE; $(date -u +%FT%TZ)" > "$STAMP"
install_extras

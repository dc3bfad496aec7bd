#!/usr/bin/env bash
# Validate a GPU installation in one command: the CUDA tests and the GPU benchmark, one markdown report.
#
#   bash tools/gpu_check.sh                  # on a machine with a CUDA GPU: < 8 min on one current GPU
#   bash tools/gpu_check.sh --out DIR        # where the report goes (default output/gpu_check)
#   bash tools/gpu_check.sh --dry-run        # on the CPU: the CUDA tests (all skipped) and a micro benchmark
#                                            # (the PyTorch path, 1 iteration): checks the script, not a GPU
#   bash tools/gpu_check.sh -- ARGS          # ARGS are passed on to tools/gpu_benchmark.py
#
# Python: $PYTHON if set, else .venv/bin/python, else python3 - a machine with a preinstalled torch (README,
# section "GPU") runs it with PYTHON=python3. The project is imported from this checkout (PYTHONPATH).
# Writes DIR/report.md (environment, test results, benchmark tables, goals), DIR/cuda_tests.log,
# DIR/benchmark.{md,json,log} and the benchmark workers' logs in DIR/logs/. Exit status: 0 when the tests
# passed and the benchmark ran, 1 otherwise, 2 without a usable GPU.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/output/gpu_check"
DRY_RUN=0
BENCH_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; BENCH_ARGS=("$@"); break ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "tools/gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY="python3"; fi
export PYTHONPATH="$ROOT/projects/SemiDETR${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
REPORT="$OUT/report.md"
cd "$ROOT"
START=$(date +%s)

ENV_TEXT="$("$PY" - "$DRY_RUN" <<'EOF' 2>&1
import platform, sys
import torch
dry_run = sys.argv[1] == "1"
print(f"- Python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda})")
try:
    import torchvision
    print(f"- torchvision {torchvision.__version__}")
except ImportError as error:
    print(f"- torchvision: not importable ({error})")
for name in ("triton", "detectron2", "fvcore", "pycocotools"):
    try:
        module = __import__(name)
        print(f"- {name} {getattr(module, '__version__', '(no version)')}")
    except Exception as error:  # report, do not stop: the tests say what it breaks
        print(f"- {name}: not importable ({type(error).__name__}: {error})")
if torch.cuda.is_available():
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        print(f"- GPU {index}: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability "
              f"{props.major}.{props.minor}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
elif not dry_run:
    print("NO_CUDA")
else:
    print("- no CUDA GPU (dry run)")
EOF
)"
if [ $? -ne 0 ] || grep -q "^NO_CUDA" <<<"$ENV_TEXT"; then
  echo "tools/gpu_check.sh: no usable CUDA GPU with $PY (torch.cuda.is_available() is False or torch failed to import):" >&2
  echo "$ENV_TEXT" >&2
  echo "Run it on a CUDA machine, with PYTHON=<the python that has the CUDA build of torch>, or with --dry-run." >&2
  exit 2
fi
echo "$ENV_TEXT"

echo "[gpu_check] CUDA tests: $PY -m pytest tests/test_cuda.py -m cuda (log: $OUT/cuda_tests.log)"
"$PY" -m pytest tests/test_cuda.py -m cuda -q -p no:cacheprovider -rs >"$OUT/cuda_tests.log" 2>&1
TESTS_RC=$?
TESTS_SUMMARY="$(tail -n 1 "$OUT/cuda_tests.log")"
echo "[gpu_check] CUDA tests: $TESTS_SUMMARY (exit $TESTS_RC)"

BENCH_FLAGS=(--out "$OUT/benchmark.md")
[ "$DRY_RUN" = 1 ] && BENCH_FLAGS+=(--dry-run)
echo "[gpu_check] benchmark: $PY tools/gpu_benchmark.py ${BENCH_FLAGS[*]} ${BENCH_ARGS[*]:-} (log: $OUT/benchmark.log)"
# The benchmark's own limit keeps the whole check within 8 minutes even if a step hangs.
timeout --signal=TERM 420 "$PY" tools/gpu_benchmark.py "${BENCH_FLAGS[@]}" ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"} \
  >"$OUT/benchmark.log" 2>&1
BENCH_RC=$?
echo "[gpu_check] benchmark: exit $BENCH_RC"

ELAPSED=$(( $(date +%s) - START ))
{
  echo "# GPU check ($(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
  echo
  [ "$DRY_RUN" = 1 ] && { echo "**Dry run** on the CPU: the script's plumbing only; no GPU figure below."; echo; }
  echo "Command: \`bash tools/gpu_check.sh $( [ "$DRY_RUN" = 1 ] && echo --dry-run )\`, ${ELAPSED} s."
  echo
  echo "## Environment"
  echo
  echo "$ENV_TEXT"
  echo
  echo "## CUDA tests (\`pytest -m cuda tests/test_cuda.py\`)"
  echo
  if [ "$TESTS_RC" = 0 ]; then echo "Passed: $TESTS_SUMMARY"; else echo "**FAILED** (exit $TESTS_RC): $TESTS_SUMMARY"; fi
  echo
  grep -E "^(FAILED|ERROR|SKIPPED)" "$OUT/cuda_tests.log" | sed 's/^/    /'
  echo
  if [ "$BENCH_RC" = 0 ] && [ -f "$OUT/benchmark.md" ]; then
    cat "$OUT/benchmark.md"
  else
    echo "## GPU benchmark: **FAILED** (exit $BENCH_RC; 124 = the 420 s limit); last lines of $OUT/benchmark.log:"
    echo
    tail -n 30 "$OUT/benchmark.log" | sed 's/^/    /'
  fi
} >"$REPORT"
echo "[gpu_check] report: $REPORT (${ELAPSED} s)"
[ "$TESTS_RC" = 0 ] && [ "$BENCH_RC" = 0 ]

#!/usr/bin/env bash
# The main job on the embedded data: set-up if needed, then Semi-DETR (DINO) semi-supervised training on
# the synthetic "shapes" data with 10% of the images labeled, on the CPU, for a few minutes; evaluation
# of the teacher (COCO AP) and PNGs of its predictions under output/demo/.
#
#   bash tools/demo.sh                 # DEMO_ITERS=300 iterations (about 10 minutes on 2 idle cores: ~2 s per iteration with the official CQC)
#   DEMO_ITERS=2000 bash tools/demo.sh # longer: see BENCHMARKS.md for the AP it reaches
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
ITERS="${DEMO_ITERS:-300}"
OUT="output/demo"
CONFIG="configs/quick_schedules/semidetr_shapes10_cpu.yaml"

echo "[demo] Semi-DETR on shapes (10% labeled), ${ITERS} iterations on the CPU -> ${OUT}"
"$PY" tools/train_net.py --config-file "$CONFIG" OUTPUT_DIR "$OUT" SOLVER.MAX_ITER "$ITERS" \
    SEMIDETR.SHM.O2M_ITERS "$((ITERS / 2))" SOLVER.CHECKPOINT_PERIOD "$ITERS" TEST.EVAL_PERIOD 0 \
    SEMI.EVAL_MODELS "['teacher']" SEMI.VIS_PERIOD "$((ITERS / 2))" SEED 1 2>&1 \
    | { grep --line-buffered -E "eta: |Evaluation of|copypaste|training stage|Saving checkpoint|Error" || true; }

echo "[demo] predictions of the teacher on 8 validation images -> ${OUT}/predictions"
VAL_IMAGES="$("$PY" -c "from semidetr.data.synthetic import prepare_shapes_split; import os; j, r = prepare_shapes_split('val'); print(os.path.join(r, 'images'))")"
# The full log (it starts with the model's structure) goes to a file; the summary lines are shown.
if ! "$PY" tools/infer.py --config-file "$CONFIG" --weights "$OUT/model_final.pth" \
    --input $(ls "$VAL_IMAGES"/*.jpg | head -8) --output "$OUT/predictions" --score-threshold 0.3 \
    > "$OUT/infer.log" 2>&1; then
  tail -30 "$OUT/infer.log"
  exit 1
fi
grep -E "semidetr.infer" "$OUT/infer.log"
echo "[demo] done: AP (copypaste line) above; pictures in $OUT/predictions and pseudo labels in $OUT/pseudo_labels"

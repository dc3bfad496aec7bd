#!/usr/bin/env bash
# The main job on the embedded data: set-up if needed, then supervised-only against Semi-DETR (DINO) on the
# synthetic "shapes_lite" data with 10% of the images labeled (fold 2; setting shapes_lite10, seed 2 of
# BENCHMARKS.md "Evidence: shapes_lite10"), on the CPU, at the same budget:
#   1. the supervised burn-in on the labeled images: DETR-family detectors need thousands of iterations
#      before their pseudo labels are worth anything (8000 here, 1.3 h on 2 cores), so the demo starts from
#      the shipped one (DEMO_WEIGHTS, trained by that BENCHMARKS run and copied with tools/export_weights.py);
#      DEMO_WEIGHTS= trains it here instead (DEMO_BURN_IN iterations);
#   2. from it, DEMO_ITERS iterations of each row (DEMO_ROWS): sup-only, the EMA-teacher control (sup-only's
#      training scored by an EMA teacher, no unlabeled loss) and Semi-DETR, all with 1 labeled image per step
#      (Semi-DETR adds 4 unlabeled ones: the paper's 1:4). T1 is DEMO_T1 = 500, the BENCHMARKS rows', so the
#      default 250 iterations are the first 250 of those rows: Semi-DETR's one-to-many stage;
#   3. the COCO AP of every row (Semi-DETR and the control: their teacher), the pseudo-label precision /
#      recall, and PNGs of the Semi-DETR teacher's predictions on validation images.
# It is tools/run_ssod_benchmarks.py at a small budget (one seed, no 100%-labels ceiling).
#
#   bash tools/demo.sh                             # DEMO_ITERS=250: 7.5 min on 2 idle cores (set-up done)
#   DEMO_ITERS=1000 bash tools/demo.sh             # the whole rows, T1 500 (about 40 min): the switch to
#                                                  # one-to-one matching and what the second stage wins back
#   DEMO_ITERS=4000 DEMO_T1=2000 bash tools/demo.sh   # the longer second stage of BENCHMARKS "A longer second
#                                                  # stage on the CPU", seed 2 (Semi-DETR 54.9 against sup-only
#                                                  # 41.4 there, at one thread each: 79 + 25 min, the control as
#                                                  # long as Semi-DETR); the rows that pass the evidence test
#   DEMO_WEIGHTS= DEMO_ITERS=1000 bash tools/demo.sh   # also the burn-in, trained here (hours): the BENCHMARKS
#                                                  # run from scratch (it reproduces on that machine type only)
# A finished run is not trained again: a second call with the same budget only prints and draws.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
WEIGHTS="${DEMO_WEIGHTS-benchmarks/weights/shapes_lite10_seed2_burn_in8000.pth}"
BURN_IN="${DEMO_BURN_IN:-8000}"
ITERS="${DEMO_ITERS:-250}"
T1="${DEMO_T1:-500}"
read -r -a ROWS <<< "${DEMO_ROWS:-sup_only sup_only_ema semidetr}"  # rows of tools/run_ssod_benchmarks.py --rows
OUT="output/demo"
mkdir -p "$OUT"
BENCH=(--settings shapes_lite10 --seeds 2 --burn-in "$BURN_IN" --iters "$ITERS" --o2m-iters "$T1"
       --rows "${ROWS[@]}" --no-ceiling --curve-period 250 --out "$OUT")
if [[ -n "$WEIGHTS" ]]; then
  BENCH+=(--burn-in-weights "$WEIGHTS")
  echo "[demo] shapes_lite10 (10% labeled, fold 2): from the shipped ${BURN_IN}-iteration supervised burn-in ($WEIGHTS),"
else
  echo "[demo] shapes_lite10 (10% labeled, fold 2): a supervised burn-in of ${BURN_IN} iterations (trained here),"
fi
echo "[demo] then ${ITERS} iterations (T1 ${T1}) of each of: ${ROWS[*]}; one run at a time on two threads -> ${OUT}"
echo "[demo] logs: ${OUT}/**/stdout.txt"
# One run at a time with both threads: sup-only at 1 image per step is short, so two one-thread runs side by
# side would leave a core idle most of the time.
"$PY" tools/run_ssod_benchmarks.py "${BENCH[@]}" --jobs 1 --threads 2 > "$OUT.log" 2>&1 || {
  tail -30 "$OUT.log"; exit 1; }
# The table: AP of every row (same labeled images per step, same budget), the differences, pseudo-label quality.
cat "$OUT/results.md"

if [[ " ${ROWS[*]} " != *" semidetr "* ]]; then
  echo "[demo] done (no pictures: DEMO_ROWS has no semidetr row)"
  exit 0
fi
SEMI_RUN="$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['run_dirs']['shapes_lite10']['2']['semidetr'])" "$OUT/results.json")"
# Drawn: the boxes the teacher would keep as pseudo labels (its run's tau_s, SEMI.PSEUDO_SCORE_THRESH).
TAU_S="$("$PY" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['SEMI']['PSEUDO_SCORE_THRESH'])" "$SEMI_RUN/config.yaml")"
echo "[demo] predictions of the Semi-DETR teacher (scores >= tau_s ${TAU_S}) on 8 validation images -> ${OUT}/predictions"
VAL_IMAGES="$("$PY" -c "from semidetr.data.datasets.synthetic import LITE_CONFIG, LITE_SPLITS, prepare_shapes_split; import os; n, s = LITE_SPLITS['lite_val']; j, r = prepare_shapes_split('lite_val', n, s, LITE_CONFIG); print(os.path.join(r, 'images'))")"
# The full log (it starts with the model's structure) goes to a file; the summary lines are shown.
if ! "$PY" tools/infer.py --config-file "$SEMI_RUN/config.yaml" --weights "$SEMI_RUN/model_final.pth" \
    --input $(ls "$VAL_IMAGES"/*.jpg | head -8) --output "$OUT/predictions" --score-threshold "$TAU_S" \
    --scale 3 \
    > "$OUT/infer.log" 2>&1; then
  tail -30 "$OUT/infer.log"
  exit 1
fi
grep -E "semidetr.infer" "$OUT/infer.log"
echo "[demo] done. Semi-DETR's AP is its EMA teacher's: the EMA-teacher control row is what weight averaging alone"
echo "[demo] gives, so Semi-DETR minus that row is what the unlabeled images add. With T1 ${T1}, these ${ITERS} iterations"
if (( ITERS <= T1 )); then
  echo "[demo] are all in the one-to-many stage; the switch to one-to-one matching at T1 costs AP that the second"
  echo "[demo] stage wins back over its iterations (DEMO_ITERS=1000 runs it)."
else
  echo "[demo] include the switch to one-to-one matching at T1 and the second stage after it."
fi
echo "[demo] BENCHMARKS.md 'Evidence: shapes_lite10' has the whole rows (1000 iterations; seed 2 is this burn-in's),"
echo "[demo] with the SSOD baseline, + SHM and + SHM + CQC, over the seeds, and 4000-iteration rows (T1 2000), where"
echo "[demo] Semi-DETR's gain over sup-only passes the test over the seeds: DEMO_ITERS=4000 DEMO_T1=2000 runs them (hours)."

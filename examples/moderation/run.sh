#!/usr/bin/env bash
# The moderation guard end to end on the embedded Gemma 3 270M: build and split the public data,
# train, calibrate the unsafe threshold for a 5% false-positive rate, evaluate on a random split
# and on held-out sources, and write the per-source table (HateCheck also per functionality). Run
# from the repository root with the virtual environment active:
#   bash examples/moderation/run.sh ../shared/data/moderation
set -euo pipefail
DATA=${1:?usage: run.sh PATH/TO/data/moderation [OUT_DIR]}
OUT=${2:-runs/moderation}
STEPS=${STEPS:-1000}         # optimizer steps of 16 rows (about 1.4 epochs)
MAX_LENGTH=${MAX_LENGTH:-64} # tokens read per text (head and tail of longer ones)
MAX_FPR=${MAX_FPR:-0.05}
SEED=${SEED:-0}              # the rows sampled, the split, the augmentation and training

python examples/moderation/prepare.py --data "$DATA" --out "$OUT/data" --seed "$SEED"
guardtune train --task moderation --train "$OUT/data/train.csv" --val "$OUT/data/val.csv" \
  --out "$OUT/model" --max-steps "$STEPS" --batch-size 16 --max-length "$MAX_LENGTH" --seed "$SEED" --overwrite
guardtune calibrate --model "$OUT/model" --data "$OUT/data/val.csv" --max-fpr "$MAX_FPR"
guardtune eval --model "$OUT/model" --data "$OUT/data/heldout.csv" --out "$OUT/eval-heldout"
guardtune predict --model "$OUT/model" --data "$OUT/data/test.csv" --out "$OUT/predictions/test.csv"
guardtune predict --model "$OUT/model" --data "$OUT/data/heldout.csv" --out "$OUT/predictions/heldout.csv"
python examples/moderation/report.py --split "random split=$OUT/predictions/test.csv" \
  --split "held-out sources=$OUT/predictions/heldout.csv" --out "$OUT/report" \
  --hatecheck "$DATA/hatecheck_test_suite_cases.csv"
echo "Serve it:  guardtune serve --model moderation=$OUT/model --port 8000"

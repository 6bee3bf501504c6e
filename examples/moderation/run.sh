#!/usr/bin/env bash
# The moderation guard end to end on the embedded Gemma 3 270M: build and split the public data,
# train, calibrate the unsafe threshold for a 5% false-positive rate on the validation split, score
# the validation split, a random test split and the held-out sources, and write the per-source
# table with the targets (HateCheck also per functionality). Run from the repository root with the
# virtual environment active:
#   bash examples/moderation/run.sh ../shared/data/moderation [OUT_DIR]
# Every setting below can be overridden from the environment, e.g. STEPS=1000 LR=3e-4 bash ...
set -euo pipefail
DATA=${1:?usage: run.sh PATH/TO/data/moderation [OUT_DIR]}
OUT=${2:-runs/moderation}
# Data (prepare.py)
CAP=${CAP:-1500}                           # most rows per source and label
SOURCE_CAPS=${SOURCE_CAPS:-}               # SOURCE=N,...: some sources' own caps (0: all rows)
PERSONA_WRAPS=${PERSONA_WRAPS:-600}        # harmful and as many benign requests after a role-play persona
PERSONA_SENTENCES=${PERSONA_SENTENCES:-600} # single benign sentences of role-play prompts
MAX_CHARS=${MAX_CHARS:-4000}               # longer in-domain texts keep their two ends (0: whole)
QUOTE_WRAPS=${QUOTE_WRAPS:-600}            # hateful posts quoted to condemn (safe) and to endorse (unsafe)
TACTIC_WRAPS=${TACTIC_WRAPS:-600}          # harmful and benign requests in fiction / pretext framings
STORY_WRAPS=${STORY_WRAPS:-0}              # harmful and benign requests inside short persuasive stories
# Training (guardtune train)
BASE=${BASE:-gemma-3-270m}                 # the embedded default, or an HF model dir / .gguf file
STEPS=${STEPS:-600}                        # optimizer steps
BATCH=${BATCH:-16}                         # rows per step
MAX_LENGTH=${MAX_LENGTH:-64}               # tokens per read; longer texts are read in windows
LR=${LR:-5e-4}
LORA_R=${LORA_R:-16}
LORA_ALPHA=${LORA_ALPHA:-32}
LORA_TARGETS=${LORA_TARGETS:-q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj}
LABEL_SMOOTHING=${LABEL_SMOOTHING:-0}      # gold targets y(1-e) + e/2 in the loss
NEFTUNE_ALPHA=${NEFTUNE_ALPHA:-0}          # NEFTune: noise on the input embeddings while training
SEED=${SEED:-0}                            # the rows sampled, the split, the augmentation and training
# Evaluation
MAX_FPR=${MAX_FPR:-0.05}                   # the threshold: highest recall at this FPR on validation

python examples/moderation/prepare.py --data "$DATA" --out "$OUT/data" --seed "$SEED" --cap "$CAP" \
  --source-cap "$SOURCE_CAPS" --persona-wraps "$PERSONA_WRAPS" --persona-sentences "$PERSONA_SENTENCES" \
  --max-chars "$MAX_CHARS" --quote-wraps "$QUOTE_WRAPS" \
  --tactic-wraps "$TACTIC_WRAPS" --story-wraps "$STORY_WRAPS"
guardtune train --task moderation --train "$OUT/data/train.csv" --val "$OUT/data/val.csv" \
  --out "$OUT/model" --base "$BASE" --max-steps "$STEPS" --batch-size "$BATCH" --max-length "$MAX_LENGTH" --lr "$LR" \
  --lora-r "$LORA_R" --lora-alpha "$LORA_ALPHA" --lora-targets "$LORA_TARGETS" \
  --label-smoothing "$LABEL_SMOOTHING" --neftune-alpha "$NEFTUNE_ALPHA" --seed "$SEED" --overwrite
guardtune calibrate --model "$OUT/model" --data "$OUT/data/val.csv" --max-fpr "$MAX_FPR"
for split in val test heldout; do
  guardtune predict --model "$OUT/model" --data "$OUT/data/$split.csv" --out "$OUT/predictions/$split.csv"
done
python examples/moderation/report.py --split "validation=$OUT/predictions/val.csv" \
  --split "random split=$OUT/predictions/test.csv" --split "held-out sources=$OUT/predictions/heldout.csv" \
  --out "$OUT/report" --hatecheck "$DATA/hatecheck_test_suite_cases.csv"
echo "Serve it:  guardtune serve --model moderation=$OUT/model --port 8000"

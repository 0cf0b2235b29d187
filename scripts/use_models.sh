#!/usr/bin/env bash
# Models from the demo runs (run `bash scripts/demo.sh` first): every command of "Using the model" in the README.
#   1. consolidate the SPEC-OPT run into one global-vocabulary model
#   2. adapt the SPEC-OPT, GLOB and STD bodies to German (never trained on), curves side by side
#   3. fine-tune the consolidated model on the bundled Rotten Tomatoes sentiment snippets
#   4. export SPEC-OPT's English Bible model and the consolidated one to Hugging Face folders; load with transformers
#   5. generate (the run's source and its export give the same text for the same seed)
# Outputs go to runs/demo-compare/models/; the plasticity plot is also copied to docs/plasticity_demo.png.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
export PYTHONUNBUFFERED=1
RUNS=runs/demo-compare
OUT=$RUNS/models
for v in spec_opt glob std; do
  if [ ! -f "$RUNS/$v/results.json" ]; then
    echo "error: $RUNS/$v is not a finished run: run 'bash scripts/demo.sh' first" >&2
    exit 2
  fi
done
rm -rf "$OUT"
mkdir -p "$OUT"

echo "== 1. dept consolidate"
dept consolidate $RUNS/spec_opt --out $OUT/consolidated

echo "== 2. dept adapt (German, never trained on)"
dept adapt $RUNS/spec_opt $RUNS/glob $RUNS/std --source de_bible=data/demo/de_bible.jsonl \
  --steps 150 --eval-every 15 --out $OUT/adapted_de

echo "== 3. dept finetune (Rotten Tomatoes sentiment)"
dept finetune $OUT/consolidated --train data/finetune/rotten_tomatoes/train.csv \
  --eval data/finetune/rotten_tomatoes/eval.csv --out $OUT/sentiment

echo "== 4. dept export, loaded with transformers"
dept export $RUNS/spec_opt --source en_bible --out $OUT/hf_en_bible
dept export $OUT/consolidated --out $OUT/hf_consolidated
python - "$OUT/hf_en_bible" "$OUT/hf_consolidated" <<'EOF'
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dept.posttrain import load_model

text = "In the beginning God created the heaven and the earth."
for path in sys.argv[1:]:
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(text, return_tensors="pt").input_ids
    ours = load_model(path)
    assert ids[0].tolist() == ours.encode(text)
    with torch.no_grad():
        diff = (model(ids).logits - ours.language_model()(ids)).abs().max().item()
    print(f"{path}: transformers {type(model).__name__}, {ids.shape[1]} tokens, "
          f"max |logit difference| vs dept = {diff:.2e}")
EOF

echo "== 5. dept generate"
dept generate $RUNS/spec_opt --source en_bible "In the beginning" --seed 1 --max-new-tokens 60 --top-p 0.9
dept generate $OUT/hf_en_bible "In the beginning" --seed 1 --max-new-tokens 60 --top-p 0.9
dept generate $OUT/consolidated "And God said" --seed 1 --max-new-tokens 60 --top-p 0.9
mkdir -p docs
cp $OUT/adapted_de/plasticity.png docs/plasticity_demo.png

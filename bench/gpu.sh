#!/usr/bin/env bash
# Everything worth measuring on one GPU, in under 10 minutes, as JSON:
#   1. the step benchmark in bf16 with torch.compile (dept's modes against transformers' LlamaForCausalLM, a
#      GPU-sized shape), and
#   2. MFU of the training step at the paper's 125M and 350M shapes, per step (bench/mfu.py), and
#   3. a short quality sweep (STD τ=0.3, GLOB, SPEC-OPT; one seed; 4× the CPU sweep's model) on the bench
#      corpus when it is built (~/.cache/dept/bench), else on the bundled demo corpus.
#
#   bash bench/gpu.sh [OUT_DIR]        # default OUT_DIR: bench/results/gpu
#
# Needs a CUDA build of torch; sets up the project's .venv like the other scripts when none is active. Each part
# has its own time limit (STEP_LIMIT, MFU_LIMIT, SWEEP_LIMIT seconds), so one slow part cannot starve the other; what
# finished is kept. Inductor's compile cache goes under OUT_DIR/.inductor so a rerun compiles faster.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:-bench/results/gpu}"
STEP_LIMIT="${STEP_LIMIT:-240}"
SWEEP_LIMIT="${SWEEP_LIMIT:-300}"
MFU_LIMIT="${MFU_LIMIT:-150}"
mkdir -p "$OUT"
if [ -z "${VIRTUAL_ENV:-}" ]; then source scripts/setup_env.sh; fi
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$OUT/.inductor}"

python - <<'EOF' > "$OUT/device.json"
import json, platform, torch
d = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda,
     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
     "bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())}
print(json.dumps(d, indent=2))
EOF
cat "$OUT/device.json"
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA device visible to torch (a CPU-only build, or no GPU): nothing measured" >&2
  exit 2
fi

echo "== step benchmark: bf16 + torch.compile (limit ${STEP_LIMIT}s)"
timeout "$STEP_LIMIT" python bench/step_speed.py --device cuda --d-model 768 --layers 12 --heads 12 \
  --vocab 32768 --seq 1024 --batch 8 --repeats 5 --steps 10 --curve-steps 20 --profile-steps 0 \
  --modes "ours:eager+bf16,ours:compile-body+fused+bf16,ours:compile+fused+bf16,ours:eager,theirs:eager+bf16,theirs:compile+bf16,theirs:compile-loss+fused+bf16,theirs:eager" \
  --out "$OUT/step_speed.json"
echo "step benchmark: exit $?"

echo "== MFU at the paper's 125M and 350M shapes (limit ${MFU_LIMIT}s)"
timeout "$MFU_LIMIT" python bench/mfu.py --device cuda --shapes 125m,350m --batch 16 --seq 1024 \
  --out "$OUT/mfu.json"
echo "mfu: exit $?"

CORPUS=demo
if [ -f "${DEPT_CACHE:-$HOME/.cache/dept}/bench/en_bible.jsonl" ]; then CORPUS=bench; fi
echo "== quality sweep on the $CORPUS corpus (limit ${SWEEP_LIMIT}s)"
timeout "$SWEEP_LIMIT" python bench/quality.py --corpus "$CORPUS" --scale 4 --device cuda --precision bf16 \
  --families std_t0.3,glob,spec_opt --seeds 0 --tune-lrs 1e-3 --batch 16 --seq-len 256 \
  --runs-dir "$OUT/runs" --out "$OUT/quality.json"
echo "quality sweep: exit $?"
ls -l "$OUT"/*.json

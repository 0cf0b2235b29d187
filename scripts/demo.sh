#!/usr/bin/env bash
# The demo: set up .venv, prepare the bundled corpus, train SPEC-OPT, SPEC, TRIM, GLOB and the STD baseline
# briefly, and print per-source validation bits per byte. Extra arguments go to `dept compare`
# (e.g. `bash scripts/demo.sh train.rounds=4`). Finished runs in runs/demo-compare are reused; delete it to start over.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
export PYTHONUNBUFFERED=1
dept compare configs/demo.yaml --variants spec_opt,spec,trim,glob,std "$@"

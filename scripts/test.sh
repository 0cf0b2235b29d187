#!/usr/bin/env bash
# The test suite, in the project's own .venv (created on first use). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
python -m pytest "$@"

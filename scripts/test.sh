#!/usr/bin/env bash
# The test suite, in the project's own .venv (created on first use). Extra arguments go to pytest.
# Two worker processes by default (DEPT_TEST_WORKERS=0 runs in this process, e.g. to debug one test); the Flower
# tests share one worker (`xdist_group`), so their federations never compete for the same cores.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
python -m pytest -n "${DEPT_TEST_WORKERS:-2}" --dist loadgroup "$@"

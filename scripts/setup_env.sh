# Sourced by demo.sh and test.sh: create .venv (once) and install dept with its test extras into it.
# torch is installed as torch==2.13.0 only when missing, so an existing (e.g. CUDA) build is kept.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q --disable-pip-version-check "torch==2.13.0"
fi
python -m pip install -q --disable-pip-version-check -e ".[dev]"

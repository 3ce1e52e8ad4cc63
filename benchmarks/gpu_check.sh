#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): parity on cuda in fp32 and bf16, then ours
# against transformers on the same card (bf16, batch 1 and 8). One command, one report file:
#
#   bash benchmarks/gpu_check.sh [--out FILE] [--runs N]     # needs python3 with CUDA torch
#   bash benchmarks/gpu_check.sh --dry-run                   # the same steps on CPU, tiny checkpoint
#
# Nothing is installed from the network. Python packages the machine lacks are installed from
# wheels in .whl/ (git-ignored; fetch them where pip works, see the message below) into a
# temporary directory, never into the system's site-packages. pali itself runs from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
NEEDED="torch numpy safetensors sentencepiece google.protobuf PIL transformers pytest"

missing() {
  "$PY" - "$@" <<'EOF'
import importlib.util, sys
def present(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a dotted name whose parent package is missing
        return False
print(" ".join(m for m in sys.argv[1:] if not present(m)))
EOF
}

lacking=$(missing $NEEDED)
if [ -n "$lacking" ] && compgen -G ".whl/*.whl" > /dev/null; then
  site=$(mktemp -d /tmp/pali-site.XXXXXX)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  lacking=$(missing $NEEDED)
fi
if [ -n "$lacking" ]; then
  echo "gpu_check: $PY lacks: $lacking" >&2
  echo "  where pip works, fetch wheels into .whl/ and run again, e.g.:" >&2
  echo "  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl PACKAGE" >&2
  exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$PY" -m benchmarks.gpu_check "$@"

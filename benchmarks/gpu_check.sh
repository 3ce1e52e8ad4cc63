#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): parity on cuda in fp32 and bf16, then ours
# against transformers on the same card (bf16, batch 1 and 8). One command, one report file:
#
#   bash benchmarks/gpu_check.sh [--out FILE] [--runs N]     # needs python3 with CUDA torch
#   bash benchmarks/gpu_check.sh --dry-run                   # the same steps on CPU, tiny checkpoint
#   bash benchmarks/gpu_check.sh --fetch-wheels 3.12         # here, where pip works: the wheels the
#                                                            # GPU machine's Python 3.12 lacks, into .whl/
#
# Nothing is installed from the network. Python packages the machine lacks are installed from
# wheels in .whl/ (git-ignored; fetch them where pip works, see the message below) into a
# temporary directory, never into the system's site-packages. pali itself runs from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
NEEDED="torch numpy safetensors sentencepiece google.protobuf PIL transformers pytest platformdirs huggingface_hub"
# What pali's engine, its tests and transformers need besides torch (pyproject.toml), as pip names.
WHEELS="numpy safetensors sentencepiece protobuf pillow transformers pytest platformdirs huggingface_hub"

if [ "${1:-}" = "--fetch-wheels" ]; then
  version=${2:?usage: gpu_check.sh --fetch-wheels PYTHON_VERSION, e.g. 3.12, the version of python3 on the GPU machine}
  mkdir -p .whl
  # pip resolves the whole dependency tree (torch is none of theirs) for that Python on x86-64 Linux
  "$PY" -m pip download -q --only-binary=:all: --python-version "$version" --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any -d .whl $WHEELS
  echo "gpu_check: $(ls .whl/*.whl | wc -l) wheels in .whl/ ($(du -sh .whl | cut -f1)); carry .whl/ to the GPU machine"
  exit 0
fi

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
  version=$("$PY" -c "import sys; print('%d.%d' % sys.version_info[:2])")
  echo "  where pip works, fetch them into .whl/ (bash benchmarks/gpu_check.sh --fetch-wheels $version)," >&2
  echo "  carry .whl/ to this machine and run again" >&2
  exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$PY" -m benchmarks.gpu_check "$@"

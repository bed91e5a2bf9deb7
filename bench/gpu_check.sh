#!/usr/bin/env bash
# The GPU check of issue 15 (bench/gpu_check.py says what it measures): 53 s on one H200
# (2026-12-04; the timeout below leaves room for slower GPUs), writes bench/results_cuda.json.
# Needs torch (any recent CUDA build), numpy, pyyaml and tqdm; not gymnasium, MuJoCo or dm_control.
#   bash bench/gpu_check.sh                                   # on the GPU machine
#   bash bench/gpu_check.sh --device cpu --quick --out /tmp/r.json   # the same path on CPU, seconds
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
"$PYTHON" - <<'EOF'
import importlib.util, sys
missing = [m for m in ("torch", "numpy", "yaml", "tqdm") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing {', '.join(missing)}; pip install {' '.join('pyyaml' if m == 'yaml' else m for m in missing)}")
EOF
exec timeout 470 "$PYTHON" bench/gpu_check.py "$@"

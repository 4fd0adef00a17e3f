#!/usr/bin/env bash
# The GPU run (bench/gpu.py's docstring says what it measures), <= 8 minutes on one GPU:
#   bash bench/gpu.sh                      -> bench/results/gpu.{json,md}
#   bash bench/gpu.sh --tiny --out DIR/gpu -> CPU, tiny sizes (tests/test_gpu_script.py)
# PYTHON picks the interpreter (default: the repo's .venv, else python3). Without faiss-gpu the script installs the
# locked faiss-gpu-cu12 once (locks/gpu-faiss.txt, hashes checked, nothing unlocked); if that fails (e.g. no
# network) the searches fall back to torch matmuls on the GPU, and the results say which ran.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
tiny=0
for a in "$@"; do [ "$a" = "--tiny" ] && tiny=1; done
[ "${RAAL_GPU_TINY:-0}" = 1 ] && tiny=1
has_faiss_gpu() { "$PY" -c 'import faiss, sys; sys.exit(0 if getattr(faiss, "get_num_gpus", lambda: 0)() > 0 else 1)' 2>/dev/null; }
if [ "$tiny" = 1 ]; then
  export RAAL_FAISS_NOTE="tiny run on the CPU (faiss-cpu)"
elif has_faiss_gpu; then
  export RAAL_FAISS_NOTE="faiss-gpu present"
else
  echo "bench/gpu.sh: faiss has no GPU support; installing the locked faiss-gpu-cu12 (locks/gpu-faiss.txt)" >&2
  if timeout 120 "$PY" -m pip install -q --require-hashes --no-deps -r locks/gpu-faiss.txt >&2 && has_faiss_gpu; then
    export RAAL_FAISS_NOTE="faiss-gpu-cu12 installed by bench/gpu.sh"
  else
    export RAAL_FAISS_NOTE="faiss-gpu unavailable (pip install failed): searches ran as torch matmuls on the GPU"
  fi
fi
echo "bench/gpu.sh: $RAAL_FAISS_NOTE" >&2
exec timeout "${RAAL_GPU_TIMEOUT:-480}" "$PY" bench/gpu.py "$@"

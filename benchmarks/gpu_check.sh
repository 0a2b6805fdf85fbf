#!/usr/bin/env bash
# The one command to hand a GPU machine: the Distill and SFD nodes' time, calls and memory on
# SD1.5, SDXL and Flux-dev (benchmarks/gpu_check.py), outputs in $OUT (else ./gpu_out).
#
#   bash benchmarks/gpu_check.sh                      # on the GPU; extra arguments go to gpu_check.py
#   bash benchmarks/gpu_check.sh --device meta        # anywhere: the estimated table
#
# ComfyUI: $COMFYUI_PATH if set, else the unmodified source unpacked from shared/comfyui or
# ../shared/comfyui (no download). Its Python requirements must be importable already (the
# torch with CUDA the machine has is used as it is); a missing one is named before any work.
# GPU_CHECK_WHEELS=DIR installs them from a folder of wheels, with no index.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-./gpu_out}
if [ -z "${COMFYUI_PATH:-}" ]; then
  tarball=$(ls shared/comfyui/ComfyUI-*.tar.gz ../shared/comfyui/ComfyUI-*.tar.gz 2>/dev/null | head -n 1 || true)
  if [ -z "$tarball" ]; then
    echo "gpu_check: set COMFYUI_PATH to a ComfyUI checkout, or put shared/comfyui beside the repository" >&2
    exit 2
  fi
  dest=${TMPDIR:-/tmp}/gpu-check-comfyui
  mkdir -p "$dest"
  [ -f "$dest/ComfyUI/main.py" ] || tar -xzf "$tarball" -C "$dest"
  export COMFYUI_PATH=$dest/ComfyUI
fi
if [ -n "${GPU_CHECK_WHEELS:-}" ]; then
  python -m pip install -q --no-index --find-links "$GPU_CHECK_WHEELS" -r "$COMFYUI_PATH/requirements.txt" >&2 || true
fi
PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" python - <<'PY'
import importlib.util, sys
missing = [m for m in ("torch", "safetensors", "einops", "transformers", "numpy", "PIL", "yaml", "scipy", "tqdm",
                       "psutil", "huggingface_hub") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing Python packages {', '.join(missing)}: install ComfyUI's requirements "
             f"(or set GPU_CHECK_WHEELS to a folder of their wheels)")
PY
device=cuda
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  device=cpu
  echo "gpu_check: no CUDA device; running on the CPU" >&2
fi
mkdir -p "$out"
exec python benchmarks/gpu_check.py --device "$device" --out "$out" "$@"

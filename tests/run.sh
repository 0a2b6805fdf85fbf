#!/usr/bin/env bash
# The project's test command: `bash tests/run.sh [pytest arguments]`.
#
# 1. Installs the package with its test extras into the current python (torch==2.13.0 first, so
#    the unpinned torch dependency never pulls CUDA wheels).
# 2. Sets up the real hosts it can find: ComfyUI from ../shared/comfyui (its setup.sh, into
#    $LEARNED_SOLVERS_HOSTS, default /tmp/learned-solvers-hosts; reused when already there),
#    unless COMFYUI_PATH already names a checkout; Stable Diffusion WebUI Forge from
#    ../shared/webui the same way (its setup.sh: its own venv and a random-weight checkpoint),
#    unless FORGE_PATH already names one; and Chromium for the browser tests (Debian's
#    `chromium`, installed with apt-get when running as root and it is missing; CHROMIUM names
#    another binary).
# 3. Runs the whole suite. A clone alone (no ../shared, no COMFYUI_PATH or FORGE_PATH) still
#    passes: the host tests skip, each with its reason. When ComfyUI, Forge and Chromium were
#    all set up, a skipped test fails the run (LEARNED_SOLVERS_NO_SKIPS=1), so CI cannot go
#    green with the host tests off.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"

shared=${LEARNED_SOLVERS_SHARED:-../shared}
hosts=${LEARNED_SOLVERS_HOSTS:-${TMPDIR:-/tmp}/learned-solvers-hosts}

if [ -z "${COMFYUI_PATH:-}" ] && [ -f "$shared/comfyui/setup.sh" ]; then
  echo "setting up ComfyUI from $shared/comfyui into $hosts/comfyui" >&2
  COMFYUI_PATH=$(bash "$shared/comfyui/setup.sh" "$hosts/comfyui" | tail -n 1)
  export COMFYUI_PATH
fi

if [ -z "${FORGE_PATH:-}" ] && [ -f "$shared/webui/setup.sh" ]; then
  echo "setting up Stable Diffusion WebUI Forge from $shared/webui into $hosts/forge" >&2
  FORGE_PATH=$(bash "$shared/webui/setup.sh" "$hosts/forge" | tail -n 1)
  export FORGE_PATH
fi

chromium=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$chromium" ] && { [ -n "${COMFYUI_PATH:-}" ] || [ -n "${FORGE_PATH:-}" ]; } && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's chromium for the browser test" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  chromium=$(command -v chromium || true)
fi
[ -n "$chromium" ] && export CHROMIUM=$chromium

if [ -n "${COMFYUI_PATH:-}" ] && [ -n "${FORGE_PATH:-}" ] && [ -n "$chromium" ]; then
  export LEARNED_SOLVERS_NO_SKIPS=${LEARNED_SOLVERS_NO_SKIPS:-1}
fi
exec python -m pytest "$@"

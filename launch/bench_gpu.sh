#!/usr/bin/env bash
# GPU checks and benchmarks for one NVIDIA card, with the CUDA image's Python (jax[cuda], torch):
#   cuDNN vs XLA attention agreement (test + table), forward throughput next to transformers,
#   and the train step of an ~800M reward model next to transformers + PyTorch (eager, compile).
# Usage: launch/bench_gpu.sh [OUTDIR] [PARTS]   PARTS: any of attention,forward,train (default all)
# A relative OUTDIR (or PYTHON=path) is read from the caller's directory.
set -uo pipefail
. "$(dirname "$0")/paths.sh"
out=$(abs "${1:-.}"); parts="${2:-attention,forward,train}"
py="${PYTHON:-python3}"; case $py in */*) py=$(abs "$py") ;; esac
cd "$(dirname "$0")/.." && mkdir -p "$out" || exit 1
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false
{
  nvidia-smi -L
  $py -c "import jax, flax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, jax.devices())"
  if [[ $parts == *attention* ]]; then
    $py -m pytest -q -p no:cacheprovider tests/models/test_attention.py
    $py -m polar_jax.bench.attention --batch 2 --seq 4096 --heads 16 --kv-heads 4 --head-dim 128
  fi
  if [[ $parts == *forward* ]]; then
    $py -m polar_jax.bench.forward --random-weights --dtype bfloat16 --batch 4 --seq 512 --attention cudnn
    $py -m polar_jax.bench.forward --random-weights --dtype bfloat16 --batch 16 --seq 2048 --attention cudnn
    $py -m polar_jax.bench.forward --random-weights --dtype float32 --batch 4 --seq 512 --attention auto
  fi
  if [[ $parts == *train* ]]; then
    $py -m polar_jax.bench.train_step --model 800m --batch 8 --seq 2048 --meshes data=1 --steps 10 --torch eager,compile
  fi
} 2>&1 | tee "$out/gpu_bench.log"

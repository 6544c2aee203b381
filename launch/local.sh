#!/usr/bin/env bash
# Train on this machine (CPU, one GPU, or one multi-GPU host: JAX sees every local device).
#   launch/local.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
# Rerun the same command to resume from WORKDIR's newest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 CONFIG WORKDIR [--config.KEY=VALUE ...]" >&2; exit 2; }
config=$1 workdir=$2; shift 2
launch/setup.sh
exec .venv/bin/python -m polar_jax train --config "$config" --workdir "$workdir" "$@"

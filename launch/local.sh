#!/usr/bin/env bash
# Train on this machine (CPU, one GPU, or one multi-GPU host: JAX sees every local device).
#   launch/local.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
# Run from any directory: CONFIG, WORKDIR and override paths are read from there (the command
# runs where it is called; only the repository's .venv is found through this script's path).
# Rerun the same command to resume from WORKDIR's newest checkpoint.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 2 ] || { echo "usage: $0 CONFIG WORKDIR [--config.KEY=VALUE ...]" >&2; exit 2; }
config=$1 workdir=$2; shift 2
"$repo/launch/setup.sh"
exec "$repo/.venv/bin/python" -m polar_jax train --config "$config" --workdir "$workdir" "$@"

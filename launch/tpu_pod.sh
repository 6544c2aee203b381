#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command on every worker (one process per host).
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]
# Needs: the gcloud CLI, this repository checked out at ~/polar_jax on every worker
# (e.g. `gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all --command "git clone ..."`),
# and WORKDIR on storage every worker sees at the same path (a Filestore/NFS mount, or a
# bucket mounted with gcsfuse): checkpoints are written by all hosts together.
# Relative paths are read from the caller's directory: CONFIG inside this checkout is passed
# relative to it (the workers' ~/polar_jax), anything else (WORKDIR, existing paths in
# overrides) as an absolute path, which must be the same on the workers.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/launch/paths.sh"
[ $# -ge 4 ] || { echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]" >&2; exit 2; }
tpu=$1 zone=$2 config=$(abs_config "$3") workdir=$(abs "$4"); shift 4
case $config in "$repo"/*) config=${config#"$repo"/} ;; esac
abs_args "$@"
overrides=""
[ $# -eq 0 ] || overrides=$(printf ' %q' "${resolved[@]}")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  cd ~/polar_jax && launch/setup.sh --tpu &&
  .venv/bin/python -m polar_jax train --multihost --no-progress --config $(printf '%q' "$config") --workdir $(printf '%q' "$workdir") $overrides"

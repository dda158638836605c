#!/usr/bin/env bash
# Train ACT on every accelerator of this machine (or its CPU).
# Usage: launch/single_machine.sh [--dry-run] [extra --config.* overrides...]
set -euo pipefail

CONFIG="${CONFIG:-configs/fashion_mnist.py}"   # a file in configs/
WORKDIR="${WORKDIR:-workdirs/$(basename "${CONFIG}" .py)}"  # local path or gs://bucket/dir
PYTHON="${PYTHON:-python3}"

dry_run=false
if [[ "${1:-}" == "--dry-run" ]]; then
  dry_run=true
  shift
fi

if [[ ! -f "${CONFIG}" ]]; then
  echo "error: CONFIG=${CONFIG} is not a file; choose one of configs/*.py" >&2
  exit 2
fi
if [[ -z "${WORKDIR}" ]]; then
  echo "error: WORKDIR is empty" >&2
  exit 2
fi

command=("${PYTHON}" -m act_jax.main "--config=${CONFIG}" "--workdir=${WORKDIR}" "$@")
echo "will run: ${command[*]}"
if [[ "${dry_run}" == true ]]; then
  exit 0
fi
exec "${command[@]}"

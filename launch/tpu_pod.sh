#!/usr/bin/env bash
# Train ACT on a Cloud TPU VM pod slice: one process per TPU VM worker, joined by
# jax.distributed (--distributed=on), all reading and writing the same gs:// workdir.
#
# Usage: launch/tpu_pod.sh [--dry-run] [create|install|train|all] [extra --config.* overrides...]
#   create   create the slice (gcloud compute tpus tpu-vm create)
#   install  on every worker: clone REPO_URL at BRANCH into ~/act-jax (or update it),
#            then pip install jax[tpu] and the package with its TFDS extra (ImageNet)
#   train    on every worker: run act_jax.main with the overrides
#   all      (default) create if CREATE=true, then install, then train
# --dry-run prints the commands and exits without running anything.
#
# Settings (environment variables):
#   TPU_NAME         name of the slice (default act-jax)
#   ZONE             zone of the slice (default us-central2-b, which has v4; v3 is in
#                    e.g. europe-west4-a)
#   ACCELERATOR_TYPE slice type (default v4-32; e.g. v3-32, v5litepod-16)
#   RUNTIME_VERSION  TPU VM image (default tpu-ubuntu2204-base)
#   PROJECT          Google Cloud project; empty uses `gcloud config get-value project`
#   SPOT             true/false: create a Spot (preemptible) slice (default false)
#   CREATE           true/false: whether `all` creates the slice first (default false)
#   REPO_URL         git URL the workers clone (default: this checkout's origin)
#   BRANCH           branch or tag the workers check out (default main)
#   CONFIG           a file in configs/ (default configs/imagenet.py)
#   WORKDIR          gs://bucket/dir for checkpoints, logs and results (required by train, all)
#   DATA_DIR         gs://bucket/tensorflow_datasets with prepared TFDS data (required for
#                    ImageNet, which must be prepared there in advance)
#
# Example:
#   ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 CREATE=true \
#     WORKDIR=gs://my-bucket/act/imagenet DATA_DIR=gs://my-bucket/tensorflow_datasets \
#     launch/tpu_pod.sh all --config.train.epochs=90
#
# Preemption and resuming: training checkpoints to WORKDIR (and on SIGTERM, which maintenance
# events send), so running `launch/tpu_pod.sh train` again with the same CONFIG and WORKDIR
# resumes from the newest checkpoint. A preempted Spot slice is gone: delete it
# (gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE"), then run
# `CREATE=true launch/tpu_pod.sh all`.
# The run lasts as long as the ssh session, so start long runs from tmux/screen or a VM.
set -euo pipefail

TPU_NAME="${TPU_NAME:-act-jax}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
PROJECT="${PROJECT:-}"
SPOT="${SPOT:-false}"
CREATE="${CREATE:-false}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${REPO_URL:-}" ]] && command -v git >/dev/null; then
  REPO_URL="$(git -C "${repo_root}" remote get-url origin 2>/dev/null || true)"
fi
REPO_URL="${REPO_URL:-}"
BRANCH="${BRANCH:-main}"
CONFIG="${CONFIG:-configs/imagenet.py}"
WORKDIR="${WORKDIR:-}"
DATA_DIR="${DATA_DIR:-}"

remote_dir=act-jax  # checkout location on each worker, relative to the ssh user's home

fail() {
  echo "error: $*" >&2
  exit 2
}

dry_run=false
if [[ "${1:-}" == "--dry-run" ]]; then
  dry_run=true
  shift
fi
phase=all
if [[ $# -gt 0 && "$1" != -* ]]; then
  phase="$1"
  shift
fi
case "${phase}" in
  create|install|train|all) ;;
  *) fail "unknown phase '${phase}'; choose one of create, install, train, all" ;;
esac
for arg in "$@"; do
  [[ "${arg}" == --config.* ]] || fail "argument '${arg}' is not a --config.* override"
done
if [[ $# -gt 0 && ( "${phase}" == create || "${phase}" == install ) ]]; then
  fail "--config.* overrides apply to the train and all phases, not ${phase}"
fi

[[ "${TPU_NAME}" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
  || fail "TPU_NAME=${TPU_NAME} must be lowercase letters, digits and hyphens, starting with a letter"
[[ "${ZONE}" =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] \
  || fail "ZONE=${ZONE} is not a zone like us-central2-b"
[[ "${ACCELERATOR_TYPE}" =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] \
  || fail "ACCELERATOR_TYPE=${ACCELERATOR_TYPE} is not a slice type like v4-32, v3-32 or v5litepod-16"
[[ -n "${RUNTIME_VERSION}" ]] || fail "RUNTIME_VERSION is empty; e.g. tpu-ubuntu2204-base"
[[ "${SPOT}" == true || "${SPOT}" == false ]] || fail "SPOT=${SPOT} must be true or false"
[[ "${CREATE}" == true || "${CREATE}" == false ]] || fail "CREATE=${CREATE} must be true or false"
# The workers clone the repository, so it must be reachable from them, not a local path.
if [[ "${phase}" == install || "${phase}" == all ]]; then
  [[ "${REPO_URL}" =~ ^(https?|ssh|git)://|^[^/@]+@[^/:]+: ]] \
    || fail "REPO_URL='${REPO_URL}' is not a git URL the workers can clone (https://, ssh:// or user@host:path)"
  [[ -n "${BRANCH}" ]] || fail "BRANCH is empty; name the branch or tag the workers check out"
fi
if [[ "${phase}" == train || "${phase}" == all ]]; then
  # CONFIG is resolved on the workers, inside their checkout.
  [[ "${CONFIG}" == configs/*.py && -f "${repo_root}/${CONFIG}" ]] \
    || fail "CONFIG=${CONFIG} is not a file in configs/; choose one of configs/*.py"
  # Each worker writes its share of every checkpoint, so they need one shared workdir.
  [[ "${WORKDIR}" == gs://?* ]] \
    || fail "WORKDIR='${WORKDIR}' must be a gs:// path: a pod's workers need a shared workdir"
  if [[ -n "${DATA_DIR}" ]]; then
    [[ "${DATA_DIR}" == gs://?* ]] \
      || fail "DATA_DIR=${DATA_DIR} must be a gs:// path that every worker can read"
  elif [[ "$(basename "${CONFIG}")" == imagenet.py ]]; then
    fail "DATA_DIR is empty; ImageNet needs gs://bucket/tensorflow_datasets with imagenet2012 prepared"
  fi
fi
if [[ "${dry_run}" == false ]] && ! command -v gcloud >/dev/null; then
  fail "gcloud is not on PATH; install the Google Cloud SDK (or use --dry-run)"
fi

project_flag=()
if [[ -n "${PROJECT}" ]]; then
  project_flag=("--project=${PROJECT}")
fi

create_command=(gcloud compute tpus tpu-vm create "${TPU_NAME}" "--zone=${ZONE}"
  ${project_flag[@]+"${project_flag[@]}"}
  "--accelerator-type=${ACCELERATOR_TYPE}" "--version=${RUNTIME_VERSION}")
if [[ "${SPOT}" == true ]]; then
  create_command+=(--spot)
fi

# Remote commands go through the worker's login shell: quote every word with %q.
# --force and FETCH_HEAD make every worker run exactly the fetched commit.
printf -v remote_install \
  'if [ -d %q/.git ]; then git -C %q fetch --depth=1 origin %q && git -C %q checkout --force -B %q FETCH_HEAD; else git clone --depth=1 --branch %q %q %q; fi && python3 -m pip install -U %q && python3 -m pip install -e %q' \
  "${remote_dir}" "${remote_dir}" "${BRANCH}" "${remote_dir}" "${BRANCH}" \
  "${BRANCH}" "${REPO_URL}" "${remote_dir}" "jax[tpu]" "${remote_dir}[tfds]"

train_args=(python3 -m act_jax.main "--config=${CONFIG}" "--workdir=${WORKDIR}" --distributed=on)
if [[ -n "${DATA_DIR}" ]]; then
  train_args+=("--config.dataset.data_dir=${DATA_DIR}")
fi
train_args+=("$@")
printf -v remote_train '%q ' "${train_args[@]}"
remote_train="cd $(printf '%q' "${remote_dir}") && ${remote_train% }"

ssh_command=(gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "--zone=${ZONE}"
  ${project_flag[@]+"${project_flag[@]}"} --worker=all)
install_command=("${ssh_command[@]}" "--command=${remote_install}")
train_command=("${ssh_command[@]}" "--command=${remote_train}")

phases=()
case "${phase}" in
  all)
    if [[ "${CREATE}" == true ]]; then
      phases+=(create)
    fi
    phases+=(install train)
    ;;
  *) phases=("${phase}") ;;
esac

# Prints a word so that the printed command can be pasted back into a shell.
quote() {
  local squote="'\\''" escaped
  escaped=${1//\'/${squote}}
  case "$1" in
    '' | *[!A-Za-z0-9_./:=@%+,-]*) printf "'%s'" "${escaped}" ;;
    *) printf '%s' "$1" ;;
  esac
}

show() {
  local line="will run:" word
  for word in "$@"; do
    line+=" $(quote "${word}")"
  done
  echo "${line}"
}

for p in "${phases[@]}"; do
  case "${p}" in
    create) show "${create_command[@]}" ;;
    install) show "${install_command[@]}" ;;
    train) show "${train_command[@]}" ;;
  esac
done
if [[ "${dry_run}" == true ]]; then
  exit 0
fi
for p in "${phases[@]}"; do
  case "${p}" in
    create) "${create_command[@]}" ;;
    install) "${install_command[@]}" ;;
    train) "${train_command[@]}" ;;
  esac
done

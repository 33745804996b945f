#!/usr/bin/env bash
# autocompress on SLURM: one Optuna study in PostgreSQL, filled by a SLURM job array of workers.
#
#   export AUTOCOMPRESS_STORAGE=postgresql://USER:PASS@DBHOST:5432/autocompress
#   bash examples/slurm_array.sh                       # submits the three jobs below
#   WORKERS=16 CONFIG=my_search.yaml STUDY=resnet56-run1 bash examples/slurm_array.sh
#
# It submits (1) one job that creates the study: the configuration and the uncompressed
# model's latency, measured once on a compute node, so every worker judges the budget
# against the same baseline; (2) an array of WORKERS tasks, each `autocompress worker`,
# started when (1) succeeded; (3) `autocompress export`, which writes the results folder
# once the array has ended. Workers stop when the study holds the config's `trials`
# finished trials; a task that is preempted or killed (scancel, node failure, time limit)
# stops sending heartbeats, and another worker re-runs its trial with the same parameters.
#
# Workers should run on identical nodes: the budget's latency is predicted from a
# per-layer table each worker measures on its own node (under --out, node-local here).
# The database must be reachable from every compute node; the DB user needs CREATE on it
# the first time (Optuna creates its tables).
#
# GPUs: GPUS=1 bash examples/slurm_array.sh asks each array task for one GPU (--gres=gpu:1)
# and runs its worker with --device cuda (SLURM shows the task only its own GPU, cuda:0).
# Latency is still timed on the node's CPU, so GPU nodes must be the target's CPU type too.
# Without GPUS (the default) every worker fine-tunes on its CPUs, as before.
#
#SBATCH --job-name=autocompress-worker
#SBATCH --cpus-per-task=2
#SBATCH --mem=4G
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=slurm-%x-%A_%a.out
set -euo pipefail

CONFIG=${CONFIG:-examples/search_digits.yaml}
STUDY=${STUDY:-digits}
WORKERS=${WORKERS:-8}
GPUS=${GPUS:-0}                              # GPUs per worker (0: fine-tune on the CPUs)
OUT=${OUT:-results/${STUDY}}
AUTOCOMPRESS=${AUTOCOMPRESS:-autocompress}   # e.g. "$PWD/.venv/bin/autocompress"
: "${AUTOCOMPRESS_STORAGE:?set AUTOCOMPRESS_STORAGE=postgresql://user:pass@host:5432/db}"

if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  # Run by hand on the login node: submit the three jobs and return.
  common="--storage ${AUTOCOMPRESS_STORAGE} --study ${STUDY}"
  init=$(sbatch --parsable --job-name=autocompress-init --cpus-per-task=2 --mem=4G \
    --time=00:30:00 --export=ALL \
    --wrap "${AUTOCOMPRESS} worker --config ${CONFIG} ${common} --init-only")
  gres=()
  if [[ "${GPUS}" != "0" ]]; then gres=(--gres="gpu:${GPUS}"); fi
  array=$(sbatch --parsable --dependency=afterok:${init} --array=0-$((WORKERS - 1)) \
    ${gres[@]+"${gres[@]}"} --export=ALL,CONFIG=${CONFIG},STUDY=${STUDY},GPUS=${GPUS} "$0")
  export_job=$(sbatch --parsable --dependency=afterany:${array} --job-name=autocompress-export \
    --cpus-per-task=2 --mem=4G --time=01:00:00 --export=ALL \
    --wrap "${AUTOCOMPRESS} export ${common} --out ${OUT}")
  echo "submitted: init ${init}, workers ${array} (${WORKERS} tasks), export ${export_job}"
  echo "results will be in ${OUT}; watch with: ${AUTOCOMPRESS} export ${common} --out ${OUT} --no-measure"
  exit 0
fi

# One array task = one worker. Torch uses the CPUs SLURM gave this task (fine-tunes run on
# `threads` of them, 1 by default); the latency table goes to node-local scratch.
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
SCRATCH_DIR=${TMPDIR:-/tmp}/autocompress-${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}-${SLURM_ARRAY_TASK_ID:-0}
DEVICE=cpu
if [[ "${GPUS}" != "0" ]]; then DEVICE=cuda; fi  # the GPU SLURM gave this task
exec ${AUTOCOMPRESS} worker \
  --device "${DEVICE}" \
  --config "${CONFIG}" \
  --storage "${AUTOCOMPRESS_STORAGE}" \
  --study "${STUDY}" \
  --out "${SCRATCH_DIR}" \
  --heartbeat 30 --grace 120 --max-retry 3

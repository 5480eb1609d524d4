#!/usr/bin/env bash
# A hyperparameter search shared by many GPUs: each task of this job array is one `xray tune`
# worker of the same search, coordinated through PostgreSQL. Workers claim trials one at a
# time; a worker that dies (node failure, preemption) leaves its trial to be taken over after
# HEARTBEAT seconds, resumed from its last checkpoint because OUT is on shared storage.
#
#   sbatch --export=ALL,CONFIG=configs/tune_synth.toml,DB=postgres://xray@db.cluster/xray,OUT=/scratch/tune \
#       deploy/slurm/tune-workers.sh
#   # flags after the script go to every worker: ... deploy/slurm/tune-workers.sh --set train.epochs=20
#   # any time, on any machine: trials.csv, best.toml and trials.png from the database
#   xray tune --config "$CONFIG" --storage "$DB" --out "$OUT" --report
#
# The database user needs CREATE on the database once (xray creates its three tables). Give a
# password as PGPASSWORD (e.g. exported from a file only you can read), not inside DB, which
# shows in `ps` and in Slurm's records.
#SBATCH --job-name=xray-tune
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --output=xray-tune-%A_%a.log
set -euo pipefail
: "${CONFIG:?set CONFIG to the config of the search (with a [tune] section)}"
: "${DB:?set DB to postgres://USER@HOST/DATABASE}"
: "${OUT:?set OUT to a folder on shared storage}"
XRAY="${XRAY:-xray}"
# threads: libtorch's threads per worker, the task's own cores (two workers on one node must
# not each take all of its cores: scripts/bench/cluster.sh measures 0.35x when they do).
exec "$XRAY" tune --config "$CONFIG" --storage "$DB" --out "$OUT" \
    --set threads="${SLURM_CPUS_PER_TASK:-0}" \
    --worker "${SLURM_JOB_ID:-local}-${SLURM_ARRAY_TASK_ID:-0}" \
    --heartbeat-timeout "${HEARTBEAT:-120}" "$@"

#!/usr/bin/env bash
# A hyperparameter search shared by many GPUs: each task of this job array is one `xray tune`
# worker of the same search, coordinated through PostgreSQL. Workers claim trials one at a
# time; a worker that dies (node failure, preemption) leaves its trial to be taken over after
# HEARTBEAT seconds, resumed from its last checkpoint because OUT is on shared storage.
#
#   sbatch --export=ALL,CONFIG=configs/tune_synth.toml,DB=postgres://xray@db.cluster/xray,OUT=/scratch/tune \
#       deploy/slurm/tune-workers.sh
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
: "${CONFIG:?set CONFIG to the search's config (with a [tune] section)}"
: "${DB:?set DB to postgres://USER@HOST/DATABASE}"
: "${OUT:?set OUT to a folder on shared storage}"
XRAY="${XRAY:-xray}"
exec "$XRAY" tune --config "$CONFIG" --storage "$DB" --out "$OUT" \
    --worker "${SLURM_JOB_ID:-local}-${SLURM_ARRAY_TASK_ID:-0}" \
    --heartbeat-timeout "${HEARTBEAT:-120}"

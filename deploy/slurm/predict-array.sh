#!/usr/bin/env bash
# Score an archive of images as a Slurm job array: each task predicts its shard of the files
# (`--shard auto` reads SLURM_ARRAY_TASK_ID / _MIN / _COUNT), writes shard-<id>.csv under
# OUT, and carries on from its partial file if it was preempted and requeued. A last job,
# started when every task has ended, merges the shards and checks that every file has exactly
# one row.
#
#   sbatch --export=ALL,ARCHIVE=/data/archive,RUN=/models/pneumonia,OUT=/scratch/scores \
#       deploy/slurm/predict-array.sh
#   # when the array has ended (or chained: sbatch --dependency=afterok:<array job id>):
#   xray merge "$OUT" --inputs "$ARCHIVE" --out "$OUT/all.csv"
#
# Run by hand outside Slurm (what the tests of this file do), set the variables yourself:
#   SLURM_ARRAY_TASK_ID=0 SLURM_ARRAY_TASK_COUNT=4 ARCHIVE=... RUN=... OUT=... \
#       deploy/slurm/predict-array.sh
#SBATCH --job-name=xray-predict
#SBATCH --array=0-15
#SBATCH --cpus-per-task=8
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=xray-predict-%A_%a.log
set -euo pipefail
: "${ARCHIVE:?set ARCHIVE to the folder of images}"
: "${RUN:?set RUN to the trained run folder}"
: "${OUT:?set OUT to a folder on shared storage}"
XRAY="${XRAY:-xray}"
mkdir -p "$OUT"
# The shard is named by its index, so a requeued task finds its own partial file.
# Flags after the script's name go to `xray predict` (e.g. --batch-size 64 --device cuda).
exec "$XRAY" predict --checkpoint "$RUN" --shard auto \
    --out "$OUT/shard-${SLURM_ARRAY_TASK_ID:?not in a Slurm job array}.csv" "$@" "$ARCHIVE"

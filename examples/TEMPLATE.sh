#!/bin/sh
# Template for a machine-learning experiment run by gpudispatch.
#
# gpudispatch runs this script with CUDA_VISIBLE_DEVICES set to the GPU(s) it was given,
# from the directory the dispatcher was started in, so relative paths below are
# relative to that directory (as with the original jobdispatcher.py).
#
# Directives (optional) configure the job, like #SBATCH lines do; they must come
# before the first command:
#GPUDISPATCH --gpus 1 --timeout 12h --retries 1
#
# Useful variables: GPUDISPATCH_JOB (this script's name), GPUDISPATCH_ATTEMPT,
# GPUDISPATCH_METRICS (write a JSON object of final metrics there, for
# `gpudispatch results`), GPUDISPATCH_LOG (where this output goes).

set -eu

EXPERIMENT="${GPUDISPATCH_JOB:-manual}"
EXPERIMENT="${EXPERIMENT%.sh}"
LOGDIR="../logs/mnist/$EXPERIMENT"
mkdir -p "$LOGDIR"

python -u main.py \
    --model LeNet \
    --dataset mnist \
    --epochs 10 \
    --lr 0.01 \
    --logdir "$LOGDIR" \
    --metrics-file "${GPUDISPATCH_METRICS:-$LOGDIR/metrics.json}"

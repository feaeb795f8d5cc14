#!/bin/sh
# A stand-in experiment: says where it runs, works for a moment, succeeds.
echo "script01: GPU '${CUDA_VISIBLE_DEVICES}' in $(pwd) (attempt ${GPUDISPATCH_ATTEMPT:-?})"
sleep 1
echo "script01: done"

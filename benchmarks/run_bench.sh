#!/usr/bin/env bash
# The CPU bench of issue 8: nine methods (+ the ir/vis reference rows) on MSRS dev-val (infrared labels) and TNO,
# protocols fusion, zero, retrain (CPU preset, one seed). Resumable: rerun the same command after an interruption.
#
#   benchmarks/run_bench.sh [OUT_DIR] [extra ivfuse bench options, e.g. --seeds 3 --preset gpu --device cuda]
#
# One torch thread: on a CPU shared with other jobs, 2 OpenMP threads made YOLOv5n inference 20x slower
# (0.48 s -> 9.9 s per image) because the threads spin-wait for each other; on an idle machine raise it.
set -euo pipefail
OUT=${1:-bench_run}
shift || true
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
start=$(date +%s)
ivfuse bench --methods average,max,laplacian,gff,metafusion,seafusion,tardal,ifcnn,didfuse \
    --data msrs:dev-val,tno --protocols fusion,zero,retrain --labels infrared --preset cpu --seeds 1 --out "$OUT" "$@"
echo "wall $(( $(date +%s) - start )) s; report: $OUT/report.html"

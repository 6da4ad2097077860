#!/usr/bin/env bash
# The off-policy simulator figures in docs/results/offpolicy (README "Improving the router
# from traffic"). Hashing features, 100 repeats of 5,000 logged requests per scenario; about
# 15 minutes on 2 shared cores. Usage: scripts/offpolicy_results.sh [DATA_DIR]
set -euo pipefail
D=${1:-${EXPERTGATE_DATA_DIR:-../shared/data}}
OUT=docs/results/offpolicy
EG="nice -n 10 python -m expertgate eval offpolicy"
export OMP_NUM_THREADS=1
mkdir -p $OUT
$EG --simulate $D/routellm --logging knn:cost_weight=0.1 --candidate classifier:cost_weight=0.1 \
    --rate 0.1 --train knn:cost_weight=0.1 --json $OUT/mmlu-new-family-eps10.json
$EG --simulate $D/routellm --logging knn:cost_weight=0.1 --candidate classifier:cost_weight=0.1 \
    --rate 0.05 --json $OUT/mmlu-new-family-eps5.json
$EG --simulate $D/routellm --logging knn:cost_weight=1.0 --candidate knn:cost_weight=0 \
    --rate 0.1 --json $OUT/mmlu-quality-first-eps10.json
$EG --simulate $D/llmrouter_nq --logging knn:cost_weight=1.0 --candidate knn:cost_weight=0 \
    --rate 0.1 --train knn:cost_weight=0 --json $OUT/nq-quality-first-eps10.json
$EG --simulate $D/llmrouter_nq --logging knn:cost_weight=1.0 --candidate knn:cost_weight=0 \
    --rate 0.05 --json $OUT/nq-quality-first-eps5.json
$EG --simulate $D/llmrouter_nq --logging knn:cost_weight=1.0 --candidate knn:cost_weight=0 \
    --rate 0.1 --method softmax --temperature 0.1 --json $OUT/nq-quality-first-softmax10.json
python -m expertgate eval offpolicy --summarise $OUT/*.json --out $OUT/summary.md

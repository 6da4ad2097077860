#!/usr/bin/env bash
# The off-policy simulator figures in docs/results/offpolicy (README "Improving the router
# from traffic"): 100 repeats of 5,000 logged requests per scenario, distilled static
# embeddings (one embedding per table, cached), each run under the shared heavy-run lock.
#   scripts/offpolicy_results.sh dev [DATA_DIR]     development seed: docs/results/offpolicy/dev,
#                                                   where the clipped DR's cap (--clip) and the
#                                                   training correction are chosen
#   scripts/offpolicy_results.sh report [DATA_DIR]  the report seeds: the published figures
#   scripts/offpolicy_results.sh weights [DATA_DIR] development seed, 30 repeats per scenario
#                                                   and --reward-weights none|ips|iw|mrdr:
#                                                   docs/results/offpolicy/dev/reward-weights
set -euo pipefail
SET=${1:?usage: scripts/offpolicy_results.sh dev|report|weights [DATA_DIR]}
D=${2:-${EXPERTGATE_DATA_DIR:-../shared/data}}
# training from the logs chooses its correction on held-out logs per seed, so the development
# run skips it
case $SET in
  dev) OUT=docs/results/offpolicy/dev; T1=; T2= ;;
  report) OUT=docs/results/offpolicy; T1="--train knn:cost_weight=0.1"; T2="--train knn:cost_weight=0" ;;
  weights) OUT=docs/results/offpolicy/dev/reward-weights; T1=; T2= ;;
  *) echo "usage: scripts/offpolicy_results.sh dev|report|weights [DATA_DIR]" >&2; exit 2 ;;
esac
# one heavy run at a time (EXPERTGATE_HEAVY_LOCK: a lock file shared with other jobs)
LOCK=${EXPERTGATE_HEAVY_LOCK:-${TMPDIR:-/tmp}/expertgate-heavy.lock}
SEEDS=$SET
[ "$SET" = weights ] && SEEDS=dev
EG="flock $LOCK nice -n 10 python -m expertgate eval offpolicy --embedder distilled --seed-set $SEEDS"
export OMP_NUM_THREADS=1
mkdir -p $OUT
S="mmlu-new-family-eps10 mmlu-new-family-eps5 mmlu-quality-first-eps10 nq-quality-first-eps10"
S="$S nq-quality-first-eps5 nq-quality-first-softmax10"
# run the six scenarios; $1: extra flags, $2: suffix of the JSON names
scenarios() {
  $EG --simulate $D/routellm --logging knn:cost_weight=0.1 --candidate classifier:cost_weight=0.1 \
      --rate 0.1 $T1 $1 --json $OUT/mmlu-new-family-eps10$2.json
  $EG --simulate $D/routellm --logging knn:cost_weight=0.1 --candidate classifier:cost_weight=0.1 \
      --rate 0.05 $1 --json $OUT/mmlu-new-family-eps5$2.json
  $EG --simulate $D/routellm --logging knn:cost_weight=1.0 --candidate knn:cost_weight=0 \
      --rate 0.1 $1 --json $OUT/mmlu-quality-first-eps10$2.json
  $EG --simulate $D/llmrouter_nq --logging knn:cost_weight=1.0 --candidate knn:cost_weight=0 \
      --rate 0.1 $T2 $1 --json $OUT/nq-quality-first-eps10$2.json
  $EG --simulate $D/llmrouter_nq --logging knn:cost_weight=1.0 --candidate knn:cost_weight=0 \
      --rate 0.05 $1 --json $OUT/nq-quality-first-eps5$2.json
  $EG --simulate $D/llmrouter_nq --logging knn:cost_weight=1.0 --candidate knn:cost_weight=0 \
      --rate 0.1 --method softmax --temperature 0.1 $1 --json $OUT/nq-quality-first-softmax10$2.json
}
if [ "$SET" = weights ]; then
  # the same 30 repeats (the first of the development runs) for every weighting
  for W in ${WEIGHTS:-none ips iw mrdr}; do
    scenarios "--repeats 30 --reward-weights $W" "-$W"
  done
  python -m expertgate eval offpolicy --out $OUT/summary.md --summarise \
    $(for W in none ips iw mrdr; do for s in $S; do echo $OUT/$s-$W.json; done; done)
  exit 0
fi
scenarios "" ""
python -m expertgate eval offpolicy --out $OUT/summary.md --summarise $(for s in $S; do echo $OUT/$s.json; done)

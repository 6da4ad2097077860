# The README's two commands are `make demo` and `make test`; both run `make setup` first.
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-unit test-integration lint typecheck bench-overhead bench-router soak bench-startup eval-guard eval-guard-default eval-routing eval-simple-bar train-time report clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m expertgate demo --config examples/demo-local.yaml

test: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

test-unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

test-integration: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/integration tests/e2e

lint: setup
	$(PY) -m ruff check gateway routers evals expertgate tests

typecheck: setup
	$(PY) -m mypy

bench-overhead: setup
	$(PY) -m expertgate bench overhead --json runs/bench-overhead.json --plot runs/bench-overhead.png

bench-router: setup
	$(PY) -m expertgate bench router --json runs/bench-router.json

soak: setup
	$(PY) -m expertgate bench soak --out runs/soak.json

# the first decisions after a start, with and without the start-up warm-up: the README demo's
# config and a learned stack policy as `expertgate train` writes it
bench-startup: setup
	$(PY) -m expertgate bench startup --config examples/demo-local.yaml --rounds 5 --json docs/results/startup/demo-local.json
	$(PY) -m expertgate train --router stack --data routellm:gsm8k --embedder distilled --out /tmp/s13/gsm8k-stack > /dev/null
	$(PY) -m expertgate bench startup --config /tmp/s13/gsm8k-stack/policy.yaml --rounds 5 --json docs/results/startup/stack-gsm8k.json

eval-guard: setup
	$(PY) -m expertgate eval guard --suite clinc150-gqr --embedder onnx --finetune --finetune-epochs 0,2 --methods baseline-tfidf-svm,baseline-lr-knn,guard-knn,guard-mahalanobis,guard-mlp-knn+msp --target-frr 0.02,0.05 --seed-set report --latency-sample 100 --json docs/results/guard/clinc150-gqr.json

# the plain command on every built-in suite (its defaults: the distilled embedder, the default
# candidates with the two-stage guard, selection by validation GQR)
eval-guard-default: setup
	for s in clinc150-gqr banking77 clinc150-intents banking77-domain; do \
	  $(PY) -m expertgate eval guard --suite $$s --seed-set report --typos 0.2 --quiet \
	    --json docs/results/guard-default/$$s.json || exit 1; done

eval-routing: setup
	$(PY) -m expertgate eval routing --data routellm:mmlu --seeds 5 --seed-set report --embedder minilm --threads 2 --json docs/results/runs/mmlu.json

# the simple-baseline bar and the default per-query cost model on the public tables
eval-simple-bar: setup
	$(PY) -m expertgate eval routing --data routellm:mmlu --routers knn,classifier,category,stack,irt,auto --seeds 5 --seed-set report --json docs/results/simple-bar/mmlu.json --quiet
	$(PY) -m expertgate eval routing --data routellm:gsm8k --routers knn,classifier,mf,stack,irt,auto --seeds 5 --seed-set report --json docs/results/simple-bar/gsm8k.json --quiet
	$(PY) -m expertgate eval routing --data llmrouter_nq --routers knn,classifier,mf,category,stack,irt,auto --seeds 5 --seed-set report --json docs/results/simple-bar/nq.json --quiet
	$(PY) -m expertgate eval routing --data synthetic:6000x10:length --routers knn,classifier,stack,irt,auto --seeds 5 --seed-set report --embedder hashing --json docs/results/simple-bar/synthetic-6000x10-length.json --quiet

# training time on the 14k MMLU table, a fresh embedding cache per family
train-time: setup
	for f in irt stack auto; do rm -rf build/train-time; \
	  $(PY) -m expertgate train --router $$f --data routellm:mmlu --embedder distilled --seed 1009 \
	    --cache-dir build/train-time/cache --out build/train-time/$$f \
	    --metrics-json docs/results/train-time/$$f.json > /dev/null || exit 1; done

report: setup
	$(PY) -m expertgate eval report --runs docs/results/runs docs/results/guard --out docs/results

clean:
	rm -rf .venv build *.egg-info

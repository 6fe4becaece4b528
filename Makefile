.PHONY: test test-fast lint format main bench
test:            ## lint + full test suite (sets up the virtualenv and NLTK data first)
	bash scripts/run_tests.sh
test-fast:       ## tests without the slow and network ones
	bash scripts/run_tests.sh -m "not slow and not network"
lint:
	bash -c 'source scripts/env.sh && ruff check . && ruff format --check .'
format:
	bash -c 'source scripts/env.sh && ruff check --fix . && ruff format .'
main:            ## the README's main job
	bash scripts/run_main.sh
bench:           ## the CPU benchmarks (GPU: perf/gpu_suite.sh)
	bash -c 'source scripts/env.sh && python perf/bench_labeler.py && python perf/bench_data.py && python perf/bench_step.py --world 2 --model vit_tiny --batch 32 && python perf/scaling_model.py'

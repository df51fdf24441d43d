.PHONY: run test install lint bench-model loadtest

run:            ## install and run Redis + worker + gateway + Flower locally
	scripts/run.sh

test:           ## install and run the tests (needs nothing but Python 3.10+ and apt for redis-server)
	scripts/test.sh

install:
	scripts/install.sh --dev

lint:           ## ruff check and format (ruff.toml), and mypy on app/ tasks/ config/ (setup.cfg)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

bench-model:    ## batched vs unbatched throughput of the full-size model
	.venv/bin/python -m bench.model_throughput

loadtest:       ## the 500-stream comparison (original single worker vs scaled)
	.venv/bin/python -m bench.scenario five-hundred --cap 50

.PHONY: demo demo-fleet test lint ci bench

demo:  ## set up and start the demo (scheduler + admin on SQLite)
	bash scripts/demo.sh

demo-fleet:  ## the demo plus a private Redis and a Celery worker (needs redis-server)
	bash scripts/demo.sh --fleet

test:  ## set up and run the whole test suite
	bash scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

ci:
	bash .ci/run

bench:  ## benchmarks against APScheduler and django-apscheduler -> docs/benchmarks.md
	.venv/bin/pip install -q -r requirements-bench.txt
	.venv/bin/python -m bench

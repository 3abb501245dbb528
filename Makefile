# Developer entry points. Everything runs in .venv (created by `make setup`) with ROS 2 DDS
# discovery restricted to this machine (see scripts/env.sh).
SHELL := /bin/bash
.DEFAULT_GOAL := test
ENV := . scripts/env.sh &&

.PHONY: setup test lint demo bench clean

setup:
	bash scripts/setup.sh

test:
	bash scripts/test.sh $(PYTEST_ARGS)

# ruff (pinned in requirements.txt, settings in pyproject.toml); CI runs it before the tests.
lint: setup
	$(ENV) "$$VENV/bin/ruff" check .

demo: setup
	@if [ -f scripts/demo.sh ]; then bash scripts/demo.sh; \
	else echo "make demo: scripts/demo.sh does not exist yet"; exit 1; fi

# QUICK=1 make bench  ->  bench/run.py --quick
bench: setup
	@if [ -f bench/run.py ]; then $(ENV) "$$VENV/bin/python" bench/run.py $(if $(filter 1 yes true,$(QUICK)),--quick,); \
	else echo "make bench: bench/run.py does not exist yet"; exit 1; fi

# Removes build outputs and caches; keeps .venv (delete it by hand for a full reinstall) but
# forgets its build/editable-install stamps so the next `make setup` rebuilds.
clean:
	rm -rf build install log *.egg-info .pytest_cache .hypothesis .venv/.pebal-stamps/cmake .venv/.pebal-stamps/editable
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# Quick start (fresh machine):  make app   |   make test
FLICKR8K_DIR ?= $(abspath ../shared/flickr8k)
export FLICKR8K_DIR
# The dashboard listens on loopback only; `make app ADDRESS=0.0.0.0` serves it to the network on purpose.
ADDRESS ?= 127.0.0.1

.PHONY: app test lint setup setup-test setup-ray mutation
app: setup
	.venv/bin/python -m ui.launch --server.address $(ADDRESS)

test: setup-test
	.venv/bin/ruff check .
	.venv/bin/python -m pytest

lint: setup-test
	.venv/bin/ruff check .

setup:
	bash scripts/setup.sh app

setup-test:
	bash scripts/setup.sh test

# `caption --engine ray` (README "Beyond one machine"): the optional Ray extra on top of `make setup`.
setup-ray: setup
	.venv/bin/python -m pip install -q --no-build-isolation -e '.[ray]'

# Mutation testing of the core modules (mutmut 3, slow: not part of `make test`); docs/mutation.md.
# `make mutation MODULES="text metrics"` runs some of them; scores: .venv/bin/python scripts/mutation_score.py
mutation: setup-test
	nice -n 10 bash scripts/mutation.sh $(MODULES)

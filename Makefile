# Quick start (fresh machine):  make app   |   make test
FLICKR8K_DIR ?= $(abspath ../shared/flickr8k)
export FLICKR8K_DIR

.PHONY: app test setup setup-test
app: setup
	.venv/bin/streamlit run streamlit_app.py

test: setup-test
	.venv/bin/python -m pytest

setup:
	bash scripts/setup.sh app

setup-test:
	bash scripts/setup.sh test

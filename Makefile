# The two commands of the README: `make quickstart` (main job) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup quickstart test lint train-demo clean

setup:
	@scripts/setup.sh

quickstart: setup
	@scripts/quickstart.sh

test: setup lint
	$(BIN)/pytest -q -p no:cacheprovider --durations=15

# Imports point down (pyproject's import-linter contracts); ruff lint and format.
lint: setup
	$(BIN)/lint-imports
	$(BIN)/ruff check samsnet_search tests
	$(BIN)/ruff format --check samsnet_search tests

clean:
	rm -rf runs mlruns .samsnet data/synth

# The two commands of the README: `make quickstart` (main job) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup quickstart test train-demo clean

setup:
	@scripts/setup.sh

quickstart: setup
	@scripts/quickstart.sh

test: setup
	$(BIN)/pytest -q -p no:cacheprovider --durations=15

clean:
	rm -rf runs mlruns .samsnet data/synth

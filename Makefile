# `make demo` and `make test` do all set-up themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-fuzz bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[cpu,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/crossattn check --all

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Generated malformed inputs and injected faults at full size (`make test` runs 25 examples per property).
FUZZ_EXAMPLES ?= 1000
test-fuzz: $(STAMP)
	CROSSATTN_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -m 'slow or not slow' \
		--hypothesis-show-statistics tests/test_fuzz.py tests/test_faults.py

# `crossattn bench` of a few models (table, docs/bench.json, docs/bench.png), then the CLI timings
BENCH_SPECS ?= resnet18_baseline se_resnet50 gcnet_seg non_local_embedded_gaussian mnist_non_local
bench: $(STAMP)
	$(BIN)/crossattn bench $(BENCH_SPECS) --json docs/bench.json --plot docs/bench.png
	$(BIN)/python benchmarks/cli_bench.py

clean:
	rm -rf $(VENV) build *.egg-info

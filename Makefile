# NVIDIA-style targets; each is one line calling `python -m harness`. RUN_ARGS as NVIDIA's.
PYTHON ?= python3
RUN_ARGS ?=
BENCHMARKS ?= smollm2-135m
SETUP := build/.setup.stamp

.PHONY: setup default test test_gpu preprocess_data generate_engines run_harness run_audit_harness record_accuracy_targets bench stage_results check_submission lint clean

$(SETUP): pyproject.toml requirements-data.txt scripts/setup.sh
	PYTHON=$(PYTHON) bash scripts/setup.sh && mkdir -p build && touch $@

setup: $(SETUP)

default: $(SETUP)
	$(PYTHON) -m harness default $(RUN_ARGS)

test: $(SETUP)
	$(PYTHON) -m pytest -q tests

test_gpu: $(SETUP)
	$(PYTHON) -m pytest -q tests/gpu

preprocess_data: $(SETUP)
	$(PYTHON) -m harness preprocess_data --benchmarks=$(BENCHMARKS) $(RUN_ARGS)

generate_engines: $(SETUP)
	$(PYTHON) -m harness generate_engines $(RUN_ARGS)

run_harness: $(SETUP)
	$(PYTHON) -m harness run_harness $(RUN_ARGS)

run_audit_harness: $(SETUP)
	$(PYTHON) -m harness run_audit_harness $(RUN_ARGS)

record_accuracy_targets: $(SETUP)
	$(PYTHON) -m harness record_accuracy_targets $(RUN_ARGS)

bench: $(SETUP)
	$(PYTHON) -m harness bench $(RUN_ARGS)

stage_results: $(SETUP)
	$(PYTHON) -m harness stage_results $(RUN_ARGS)

check_submission: $(SETUP)
	$(PYTHON) -m harness check_submission $(RUN_ARGS)

lint:
	$(PYTHON) -m ruff check harness preprocess tests
	$(PYTHON) -m ruff format --check harness preprocess tests

clean:
	rm -rf build/logs build/engines

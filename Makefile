# Two commands on a fresh machine: `make demo` and `make test`.
# GPU users override the torch pin, e.g. `make test TORCH_SPEC="torch==2.13.0" TORCH_PIP_ARGS="--index-url <their index>"`;
# CPU-only machines without a local wheel: TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu".
# A different TORCH_SPEC / TORCH_PIP_ARGS on a later call reinstalls torch in the existing .venv.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
# Every other package at the version the suite was last checked with; `make venv CONSTRAINTS=` floats them.
CONSTRAINTS ?= constraints.txt
# pip shows its install progress; PIP_FLAGS=-q quietens it.
PIP_FLAGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.thinkpix-installed
TORCH_STAMP := $(VENV)/.thinkpix-torch-installed
TORCH_REQUEST := $(VENV)/.thinkpix-torch-request
TORCH_LINE := $(strip $(TORCH_SPEC) $(TORCH_PIP_ARGS))

.PHONY: venv test test-slow lint demo bases constraints clean

# The torch request as a file rewritten (when make reads this Makefile, so `make -n` tells the truth) only when
# TORCH_SPEC or TORCH_PIP_ARGS change: its date tells make whether torch must be reinstalled.
ifneq ($(MAKECMDGOALS),clean)
$(shell mkdir -p $(VENV) && (echo '$(TORCH_LINE)' | cmp -s - $(TORCH_REQUEST) || echo '$(TORCH_LINE)' > $(TORCH_REQUEST)))
endif

# Uninstall first: another build of the same version (CPU vs CUDA) would otherwise count as installed.
$(TORCH_STAMP): $(TORCH_REQUEST)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip uninstall -y torch
	$(PY) -m pip install $(PIP_FLAGS) "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	touch $@

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS) $(TORCH_STAMP)
	$(PY) -m pip install $(PIP_FLAGS) $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[test]"
	touch $@

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

demo: $(STAMP)
	$(VENV)/bin/thinkpix demo --out runs/demo

bases: $(STAMP)  # re-train the shipped Shapes bases (about 7 hours on 2 cores)
	bash scripts/pretrain_bases.sh
	bash scripts/pretrain_objects_base.sh
	RECIPE=objects-pairs bash scripts/pretrain_objects_base.sh
	NAME=shapes-t2i-objects-pairs-12k CYCLE_ENDS="4000 7000 12000" RECIPE=objects-pairs bash scripts/pretrain_objects_base.sh

# After an upgrade that passes `make test`: record the new versions (torch stays TORCH_SPEC's).
constraints: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --exclude-editable --exclude torch | grep -v '^nvidia-\|^triton=='; } > constraints.tmp
	mv constraints.tmp constraints.txt

clean:
	rm -rf $(VENV) runs .pytest_cache

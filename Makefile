# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Install torch first so that the project's `torch>=2.4` is already met. The pinned release has a
# CPU wheel on this project's build machines; elsewhere pip picks the platform's default build.
# Override for another build, e.g. `make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"`.
TORCH_SPEC ?= torch==2.13.0
# The tests run in this many pytest processes (pytest-xdist), each test file whole in one of them
# (its module fixtures built once) and each process with a local Ray of its own; a single process
# leaves one of two cores idle while Ray starts workers and they import torch. `make test TEST_WORKERS=1`
# runs them one after another.
TEST_WORKERS ?= 2

.PHONY: demo test install install-test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test]"
	# DeepSpeed's CPU Adam (ZeRO-Offload) is a C++ op compiled on first use, into a cache whose build
	# file names this venv's paths: build it here, once per venv, rather than inside a training run.
	# Without a C++ compiler this only warns; offload then compiles (or fails) when first used.
	$(PY) -c "from deepspeed.ops.op_builder import CPUAdamBuilder; CPUAdamBuilder().load(verbose=False)" \
		|| echo "note: DeepSpeed's CPU Adam was not built; a run with offload=true compiles it on first use"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/hsdpo demo

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

clean:
	rm -rf $(VENV) runs .pytest_cache

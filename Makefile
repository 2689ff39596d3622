# Lanterne: the two commands are `make test` and `make demo`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEPS   := build/mpylib/.fetched-stamp

.PHONY: test demo venv deps mosquitto lint bench mutation clean

test: venv deps mosquitto
	$(PY) -m pytest -q

demo: venv deps
	$(VENV)/bin/lanterne demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Pinned MicroPython-only modules (umqtt.simple), fetched through pip's configured index.
deps: $(DEPS)

$(DEPS): host_tools/runtime/deps.py $(STAMP)
	$(PY) -m host_tools.runtime.deps fetch

# Debian's mosquitto for the integration tests (CI runs as root on a fresh Debian).
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; }

lint: venv
	$(VENV)/bin/ruff check host_tools tests

bench: venv deps
	$(VENV)/bin/lanterne bench

# Mutation testing of the commands, store, codec, drain and decoders (docs/testing.md): a
# reproducible sample of 100 mutants per Python module and every formatter mutant, kill rate per
# module, each survivor. The full campaign: python -m host_tools.reliability.mutation --jobs 2
mutation: venv deps
	$(PY) -m host_tools.reliability.mutation --sample 100 --jobs 2 --quiet

clean:
	rm -rf build $(VENV)

# Lanterne: the two commands are `make test` and `make demo`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEPS   := build/mpylib/.fetched-stamp
NODE_DEPS := build/node/node_modules/lora-packet/package.json
LORA_PACKET := lora-packet@0.9.3

.PHONY: test demo venv deps mosquitto postgresql chromium lint bench mutation clean

# Three pytest workers (most tests wait on virtual boards, not on the CPU), then the tests that load
# the whole machine (a fleet soak, a mutation campaign) alone; both always run, either failing fails.
TEST_WORKERS ?= 3
test: venv deps mosquitto postgresql chromium
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not solo"; a=$$?; \
	$(PY) -m pytest -q -m solo; b=$$?; \
	test $$a -eq 0 && test $$b -eq 0

demo: venv deps
	$(VENV)/bin/lanterne demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Pinned MicroPython-only modules (umqtt.simple), fetched through pip's configured index.
deps: $(DEPS) $(NODE_DEPS)

$(DEPS): host_tools/runtime/deps.py $(STAMP)
	$(PY) -m host_tools.runtime.deps fetch

# lora-packet (npm), the independent LoRaWAN implementation the tests check our frames with.
# Node and npm from Debian when missing; the package goes into build/node (never committed).
$(NODE_DEPS):
	@command -v npm >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	mkdir -p build/node
	npm install --prefix build/node --no-save --no-package-lock --no-audit --no-fund $(LORA_PACKET)

# Debian's mosquitto for the integration tests (CI runs as root on a fresh Debian).
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; }

# Debian's PostgreSQL for the bridge's tests and benchmark: they start their own server in a
# temporary directory (initdb + pg_ctl, as the `postgres` user when run as root).
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

# Debian's chromium for the setup page's browser test (Playwright drives it: no browser download).
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

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

# Two commands for a fresh clone:
#   make run    local Kafka, the worker, sample traffic, the dashboard at http://127.0.0.1:6066/
#   make test   every test, against a real Kafka (and PostgreSQL) started for you
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-unit lab matrix matrix-resume matrix-quick matrix-outages soak bench bench-full kafka-stop clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# [test] holds every extra ([lab], [bench], [api]): make run and the tests need them all.
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

# The demo's sink charges through the payment API (started for you) with idempotency keys.
run: $(STAMP)
	SINK_TARGET=$${SINK_TARGET:-api} $(BIN)/faust -A streams_app demo

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

lab: $(STAMP)
	$(BIN)/faust -A streams_app lab run --guarantee exactly_once --sink naive --fault crash-after-effect

matrix-quick: $(STAMP)
	$(BIN)/faust -A streams_app lab matrix --quick --out reports/quick

# The infrastructure faults on the local 3-broker cluster (started for you): reports/outages/.
OUTAGE_CLUSTER := kafka://127.0.0.1:29092;127.0.0.1:29093;127.0.0.1:29094
# 30 minutes of traffic on the cluster, worker kills and broker bounces, a 10-minute dedup
# horizon (the state plateaus, so flat memory can be judged): reports/soak.md.
soak: $(STAMP)
	BROKER_URL="$(OUTAGE_CLUSTER)" $(BIN)/faust -A streams_app lab soak --guarantee exactly_once --minutes 30 --horizon 10m --out reports

matrix-outages: $(STAMP)
	BROKER_URL="$(OUTAGE_CLUSTER)" $(BIN)/faust -A streams_app lab matrix --outages --events 1000 --out reports/outages

matrix: $(STAMP)
	$(BIN)/faust -A streams_app lab matrix --out reports

# Go on with an interrupted matrix: cells already in reports/semantics.json from the same code are kept.
matrix-resume: $(STAMP)
	$(BIN)/faust -A streams_app lab matrix --resume --out reports

bench: $(STAMP)
	$(BIN)/python -m bench run --quick --out reports

bench-full: $(STAMP)
	$(BIN)/python -m bench run --full --out reports

kafka-stop: $(STAMP)
	$(BIN)/faust -A streams_app kafka stop

clean:
	rm -rf lab-runs logs *-data payments-sink.db*

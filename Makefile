# The two commands a newcomer needs: `make run` and `make test`. Everything else is a helper.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config.toml

.PHONY: run test setup system-deps lint typecheck protos bench clean

$(BIN)/spoofwatch: pyproject.toml constraints.txt
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

setup: $(BIN)/spoofwatch

# Set up and start the daemon on its embedded defaults (simulator inside, loopback only).
run: setup
	SPOOFWATCH_CID=$${SPOOFWATCH_CID:-1} SPOOFWATCH_API_KEY=$${SPOOFWATCH_API_KEY:-local-dev-key} \
	  $(BIN)/spoofwatch run --config $(CONFIG)

# Install system peers (ffmpeg, sox, espeak-ng, SIPp, GStreamer, promtool) when missing, then the whole suite.
test: setup system-deps
	@# pytest exits 5 when it collected nothing; make would turn that into 2, so map it here.
	$(BIN)/python -m pytest -n 2 tests; rc=$$?; [ $$rc -eq 5 ] && { echo "no tests collected"; rc=0; }; exit $$rc

system-deps:
	@bash scripts/system-deps.sh

lint: setup
	$(BIN)/ruff check daemon tests benchmarks scripts
	$(BIN)/mypy --strict daemon

protos: setup
	$(BIN)/python scripts/gen_protos.py

bench: setup
	$(BIN)/python benchmarks/bench_audio.py

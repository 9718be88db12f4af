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

# Set up and start the daemon on its embedded defaults (simulator inside, loopback only). Twilio signatures
# are checked by default: without your own TWILIO_AUTH_TOKEN the public local development token is used
# (the daemon warns), the one `spoofwatch loadgen twilio` signs with by default. Likewise WHIP publishers
# (http://127.0.0.1:8081/whip) send SPOOFWATCH_WHIP_TOKEN, by default the local one, local-dev-whip-token.
run: setup
	SPOOFWATCH_CID=$${SPOOFWATCH_CID:-1} SPOOFWATCH_API_KEY=$${SPOOFWATCH_API_KEY:-local-dev-key} \
	  TWILIO_AUTH_TOKEN=$${TWILIO_AUTH_TOKEN:-local-dev-twilio-token} \
	  SPOOFWATCH_WHIP_TOKEN=$${SPOOFWATCH_WHIP_TOKEN:-local-dev-whip-token} \
	  $(BIN)/spoofwatch run --config $(CONFIG)

# Install system peers (ffmpeg, sox, espeak-ng, SIPp, GStreamer, promtool) when missing, then the whole suite.
# -rs lists every skip with its reason; under CI=true an unexpected skip fails (tests/conftest.py).
test: setup system-deps
	$(BIN)/python -m pytest -n 2 -rs tests

system-deps:
	@bash scripts/system-deps.sh

lint: setup
	$(BIN)/ruff check daemon tests benchmarks scripts
	$(BIN)/mypy --strict daemon

protos: setup
	$(BIN)/python scripts/gen_protos.py

bench: setup
	$(BIN)/python benchmarks/bench_audio.py

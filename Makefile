# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JOBS   ?= 2
export FASTDDS_BUILTIN_TRANSPORTS ?= LARGE_DATA

.PHONY: venv demo test test-fast fuzz soak lint bench clean

venv: $(STAMP)

$(STAMP): setup.py setup.cfg package.xml Makefile interfaces/tf2_msgs_pywheels/pyproject.toml interfaces/surg_invnerf_msgs/pyproject.toml interfaces/cmake/pywheels_prefix.cmake
	@test -x $(PY) || $(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 needed"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[pywheels,test,ray]"
	$(PY) -m pip install -q ./interfaces/tf2_msgs_pywheels || echo "WARN: tf2_msgs not built; /tf and /tf_static disabled"
	$(PY) -m pip install -q ./interfaces/surg_invnerf_msgs || echo "WARN: surg_invnerf_msgs not built; the ~/remove service disabled"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/surg-invnerf demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q -n $(JOBS) test

# The suite without the end-to-end tests marked slow (under a minute on 2 cores).
test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(JOBS) -m "not slow" test

# The node fuzzer run longer: FUZZ_MESSAGES malformed and valid messages (FUZZ_SEED picks the mix).
fuzz: $(STAMP)
	FUZZ_MESSAGES=$${FUZZ_MESSAGES:-100000} $(PY) -m pytest -q -s --timeout 3600 test/ros/test_fuzz.py

# The node for 30 minutes at 30 Hz with refinement on: RSS growth, live-error stability, drops, latency
# (out/soak/soak.md and soak.png, copied to docs/bench; SOAK_ARGS passes options, e.g. SOAK_ARGS="--duration-s 600").
soak: $(STAMP)
	$(VENV)/bin/surg-invnerf soak --out out/soak --docs docs/bench $(SOAK_ARGS)

# ruff (style, bugs, imports) and pyright (types) over the package.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pyright

# Every benchmark (docs/bench), then the longer node fuzzer (`make fuzz`).
bench: $(STAMP)
	$(VENV)/bin/surg-invnerf bench --out out/bench --docs docs/bench
	$(MAKE) fuzz

clean:
	rm -rf out build install log .pytest_cache

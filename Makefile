# facediff_ros -- the two commands a user needs are `make demo` and `make test`; both run
# `make setup` first (quick when everything is already there).
VENV ?= .venv
PY := $(VENV)/bin/python
# rcl writes its logs here instead of ~/.ros/log.
export ROS_LOG_DIR ?= $(CURDIR)/build/ros_log
PYTEST_ARGS ?=

.PHONY: setup test demo bench soak colcon clean distclean

setup:
	@bash tools/setup.sh

test: setup
	$(PY) -m pytest -ra $(PYTEST_ARGS) test

demo: setup
	$(PY) -m facediff_ros.cli demo

bench: setup
	$(PY) -m facediff_ros.cli bench

# Long reliability runs (not part of `make test`): the whole graph for SOAK_S seconds at 30 Hz on a
# recording (RSS, latency, fds, /dev/shm sampled; JSON report), then FUZZ_EXAMPLES hypothesis cases
# per converter and node callback.
SOAK_S ?= 1200
FUZZ_EXAMPLES ?= 10000
soak: setup
	$(PY) -m facediff_ros.reliability.soak --duration-s $(SOAK_S) --json build/soak/soak.json --log-dir build/soak/logs
	FACEDIFF_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q test/test_fuzz_adapters.py test/test_fuzz_nodes.py

# colcon build of this package against the venv's ROS 2 wheels (see README, "Building with colcon").
colcon: setup
	bash tools/colcon_build.sh

clean:
	rm -rf build install log .pytest_cache

distclean: clean
	rm -rf $(VENV)

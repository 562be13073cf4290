# lanecount: two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export YOLO_OFFLINE := 1
export YOLO_CONFIG_DIR := $(CURDIR)/.venv/ultralytics-config
export MPLBACKEND := Agg

.PHONY: help venv system-deps test test-fast lint check bench bench-counting demo demo-model clean

help:
	@echo "make demo      render a conveyor video, run the edge daemon on it with MQTT, compare with ground truth"
	@echo "make test      set up .venv and system packages, then run the whole test suite"
	@echo "make lint      ruff + mypy"
	@echo "make bench     per-stage timings and ratios (edge pipeline vs Ultralytics track+ObjectCounter)"
	@echo "make bench-counting  counting accuracy on a noisy scene bank: lanecount vs supervision vs trackers"
	@echo "make demo-model  retrain the committed demo model on synthetic scenes (CPU: about an hour)"

# Debian packages the tests and the demo need: a Mosquitto broker, headers for systemd-python,
# and OpenCV's sample footage (real pictures nobody here made) for smoke tests.
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v mosquitto_sub >/dev/null || missing="$$missing mosquitto-clients"; \
	pkg-config --exists libsystemd 2>/dev/null || missing="$$missing libsystemd-dev"; \
	command -v pkg-config >/dev/null || missing="$$missing pkg-config"; \
	[ -f /usr/share/doc/opencv-doc/examples/data/vtest.avi ] || missing="$$missing opencv-doc"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@command -v python3 >/dev/null || { echo "python3 is required"; exit 1; }
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pinned: these two come from this machine's disk; any other version downloads gigabytes.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[edge,train,export,fleet,dev,bench]'
	touch $@

venv: system-deps $(STAMP)

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

lint: venv
	$(VENV)/bin/ruff check edge train export tests
	$(VENV)/bin/ruff format --check edge train export tests
	$(VENV)/bin/mypy edge train export

check: lint test

bench: venv
	$(VENV)/bin/lanecount-train synth-video --out bench-out/video --seconds 20 --seed 5
	$(PY) -m edge.bench --video bench-out/video/video.mp4

# Roboflow's trackers needs numpy >= 2 (Norfair: < 2), so it lives in a venv of its own.
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/.installed:
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q 'trackers==2.6.1'
	touch $@

bench-counting: venv $(BENCH_VENV)/.installed
	$(PY) -m train.countbench --trackers-python $(BENCH_VENV)/bin/python --sweep

demo: venv
	$(VENV)/bin/lanecount-train synth-video --out demo-out/video --seconds 40 --seed 11
	$(PY) -m edge.demo --video demo-out/video --out demo-out

demo-model: venv
	$(PY) -m train.demo_model

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache demo-out bench-out

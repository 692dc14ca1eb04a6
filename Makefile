# Two commands do all set-up on a fresh machine (both idempotent):
#   make demo   installs everything, then separates the bundled example song
#   make test   installs everything, then runs the test suite
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.stemcli-installed
TORCH := torch==2.13.0
APT_PACKAGES := fluidsynth fluid-soundfont-gm timgm6mb-soundfont musescore-general-soundfont-small \
	openmpi-bin libopenmpi-dev ffmpeg espeak-ng libtcmalloc-minimal4
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
EXAMPLE := examples/example.ogg

.PHONY: setup system demo test bench bench-deps clean

setup: system $(STAMP)

# System packages: fluidsynth + SoundFonts (training data), OpenMPI (mpi4py), ffmpeg (museval), espeak-ng,
# tcmalloc (the heavy commands run under it: stemcli/allocator.py).
system:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:" $$missing; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

# torch is pinned to the CPU wheel before anything else can pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/stemcli list
	$(VENV)/bin/stemcli separate $(EXAMPLE) -o separated --force
	@echo "stems written to separated/$$(basename $(EXAMPLE) .ogg)/"

# The Open-Unmix baseline's wrapper is tested too: openunmix is pure Python (--no-deps, ~100 kB).
test: setup
	$(PIP) install -q --no-deps openunmix==1.3.0
	$(PY) -m pytest

# Reference systems for benchmarks/speed.py (random weights; they import torchaudio only for
# file I/O, which the benchmark stubs in its own process). --no-deps keeps torch at 2.13.0.
bench-deps: setup
	$(PIP) install -q --no-deps openunmix==1.3.0 demucs==4.1.0 einops==0.8.2 julius==0.2.8

bench: bench-deps
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/speed.py --json benchmarks/results/speed.json

clean:
	rm -rf $(VENV) separated build *.egg-info

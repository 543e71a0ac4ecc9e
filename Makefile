# The README's two commands. Each sets up .venv itself on a fresh machine.
# torch is pinned and installed first: an unpinned torch pulls a multi-GB CUDA
# build, and the 2.13.0 CPU wheel is on local disk. Never install torchvision.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean chromium

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
# pytorchfwd, the peer for FWD tests: --no-deps, as its wheel requires torchvision and pins
# ptwt==0.1.8 and scipy==1.11.1; only its freq_math module is used, on the ptwt from [dev].
	$(PY) -m pip install -q --no-deps pytorchfwd==1.0.1
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ditkit generate "a red circle to the left of a blue square" -o demo.png --seed 0

# Debian's Chromium for the browser tests (tests/test_serve_browser.py launch /usr/bin/chromium;
# Playwright never downloads a browser). apt needs root, as in CI's container.
chromium:
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q --no-install-recommends chromium) \
		|| echo 'make: warning: could not install chromium with apt; tests/test_serve_browser.py will be skipped'

test: $(STAMP) chromium
	$(PY) -m pytest

clean:
	rm -rf $(VENV)

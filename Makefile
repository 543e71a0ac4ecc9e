# The README's two commands. Each sets up .venv itself on a fresh machine.
# torch is pinned and installed first: an unpinned torch pulls a multi-GB CUDA
# build, and the 2.13.0 CPU wheel is on local disk. Never install torchvision.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean chromium emoji-font

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

# Debian's Noto Color Emoji for `ditkit data emoji` (ditkit never runs apt itself; tests/test_emoji.py
# renders glyphs with it and skips those tests without the font file).
emoji-font:
	test -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf || (apt-get update -q && apt-get install -y -q --no-install-recommends fonts-noto-color-emoji) \
		|| echo 'make: warning: could not install fonts-noto-color-emoji with apt; tests/test_emoji.py will skip its rendering tests'

test: $(STAMP) chromium emoji-font
	$(PY) -m pytest

clean:
	rm -rf $(VENV)

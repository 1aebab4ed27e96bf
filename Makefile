# The two commands of the README:  make run  (set up + generate on the built-in offline model)
#                                  make test (set up + lint + tests)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch goes in first and pinned: an unpinned torch pulls a multi-GB CUDA build. Override for a
# GPU build, e.g. make run TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
OUT    ?= out

.PHONY: setup run test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e ".[gui,dev]"
	touch $@

setup: $(VENV)/.installed

# The main job: a 512x512 terrain heightmap (16-bit PNG) from the built-in model, offline,
# with a shaded-relief picture of it, and its seam scores.
run: setup
	mkdir -p $(OUT)
	$(BIN)/paradiff generate --size 512x512 --seed 7 -o $(OUT)/paradiff-terrain.png \
		--relief $(OUT)/paradiff-terrain-relief.png
	$(BIN)/paradiff inspect $(OUT)/paradiff-terrain.png

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint
	QT_QPA_PLATFORM=offscreen QT_API=pyside6 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache

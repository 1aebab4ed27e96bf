# The two commands of the README:  make run  (set up + the desktop app on the built-in offline model)
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
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# The main job: the desktop app, on the built-in offline terrain model unless you pick another.
# With no display (a server, CI), the same app runs offscreen in scripted mode: it generates the
# default 512x512 terrain, exports it (16-bit PNG with its recipe), saves a screenshot of the
# window, prints its figures, and scores the seams of the export.
run: setup
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ] || [ "$$(uname)" = Darwin ]; then \
		$(BIN)/paradiff-gui; \
	else \
		echo "No display: running the app offscreen (scripted) on the built-in model."; \
		mkdir -p $(OUT) && \
		QT_QPA_PLATFORM=offscreen $(BIN)/paradiff-gui --autorun --quit-when-done --stats --size 1600x1000 \
			--export $(OUT)/paradiff-terrain.png --screenshot $(OUT)/paradiff-app.png && \
		$(BIN)/paradiff inspect $(OUT)/paradiff-terrain.png; \
	fi

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint
	QT_QPA_PLATFORM=offscreen QT_API=pyside6 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache

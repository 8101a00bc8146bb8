# Two entry points: `make demo` (the main job, end to end, on CPU) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WENZHI := $(VENV)/bin/wenzhi
STAMP := $(VENV)/.installed
DATA ?= $(or $(WENZHI_DATA),../shared/data)
DEMO := runs/demo

.PHONY: setup test demo clean

# torch first, pinned to the local CPU wheel: anything else lets pip pull CUDA builds.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

test: setup
	WENZHI_DATA=$(DATA) $(PY) -m pytest -rs -q

demo: setup
	mkdir -p $(DEMO)
	$(WENZHI) --data-dir $(DATA) kg import $(DATA)/kb/knowledge.txt --db $(DEMO)/kb.sqlite
	$(WENZHI) kg stats --db $(DEMO)/kb.sqlite
	$(WENZHI) kg link "我很好奇龙编站的坐标是什么啊？" --db $(DEMO)/kb.sqlite
	$(WENZHI) kg link "守望星光是韩玉玲、刘东考演唱的歌曲吗" --db $(DEMO)/kb.sqlite
	$(WENZHI) kg entity 龙编站 --db $(DEMO)/kb.sqlite

clean:
	rm -rf $(DEMO)

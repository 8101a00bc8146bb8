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

# The main job end to end on CPU (about 15 minutes on 2 cores): KB import and linking, BM25 index,
# brief pretraining of a tiny encoder, fine-tuning of the SIM, NER and GEN heads, KgCLUE dev slice
# evaluation, then the REST service answering over HTTP. Everything lands in runs/demo/, which
# `wenzhi evaluate --model runs/demo/qa --kb runs/demo/kb.sqlite` and `wenzhi serve` take as they are.
demo: setup
	mkdir -p $(DEMO)
	$(WENZHI) --data-dir $(DATA) kg import $(DATA)/kb/knowledge.txt --kb $(DEMO)/kb.sqlite
	$(WENZHI) kg stats --kb $(DEMO)/kb.sqlite
	$(WENZHI) kg link "我很好奇龙编站的坐标是什么啊？" --kb $(DEMO)/kb.sqlite
	$(WENZHI) kg link "守望星光是韩玉玲、刘东考演唱的歌曲吗" --kb $(DEMO)/kb.sqlite
	$(WENZHI) kg entity 龙编站 --kb $(DEMO)/kb.sqlite
	$(WENZHI) --data-dir $(DATA) index bm25 --kind entities --kb $(DEMO)/kb.sqlite --output $(DEMO)/bm25-entities
	$(WENZHI) --data-dir $(DATA) pretrain prepare --config model/configs/prepare_tiny.yaml \
		--kb $(abspath $(DEMO)/kb.sqlite) --output $(DEMO)/shards/tiny-128 --no-progress
	$(WENZHI) --data-dir $(DATA) pretrain run --config model/configs/tiny.yaml --output $(DEMO)/pretrain \
		--set shards=$(DEMO)/shards/tiny-128 --set steps=200 --no-progress
	# SIM: the full-interaction head learns faster in the demo's 200 steps; the late head (the default,
	# 4x cheaper to serve) needs about an epoch (bench/RESULTS.md)
	$(WENZHI) --data-dir $(DATA) finetune sim --kb $(DEMO)/kb.sqlite --out $(DEMO)/qa --init $(DEMO)/pretrain \
		--unfreeze --max-steps 200 --negatives 3 --lr 2e-3 --threads 1 --interaction full
	$(WENZHI) --data-dir $(DATA) finetune ner --kb $(DEMO)/kb.sqlite --out $(DEMO)/qa --init $(DEMO)/qa/sim \
		--max-steps 150 --lr 2e-3 --threads 1
	$(WENZHI) --data-dir $(DATA) finetune gen --kb $(DEMO)/kb.sqlite --out $(DEMO)/qa --init $(DEMO)/qa/sim \
		--unfreeze --max-steps 200 --lr 2e-3 --threads 1
	$(WENZHI) --data-dir $(DATA) finetune fusion --kb $(DEMO)/kb.sqlite --out $(DEMO)/qa --limit 200 --no-gen --threads 1
	$(WENZHI) evaluate --questions $(DATA)/kgclue/dev.json --limit 200 --kb $(DEMO)/kb.sqlite --model $(DEMO)/qa \
		--index $(DEMO)/bm25-entities --errors $(DEMO)/errors-dev200.jsonl --threads 1 | tee $(DEMO)/eval-dev200.json
	$(PY) -m wenzhi.qa_service.demo --model $(DEMO)/qa --kb $(DEMO)/kb.sqlite --index $(DEMO)/bm25-entities

clean:
	rm -rf $(DEMO)

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

# Two pytest workers on CI's two cores (about a quarter less wall time, bench/RESULTS.md); their
# OpenMP threads sleep at barriers, as in the demo below. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: export OMP_WAIT_POLICY ?= PASSIVE
test: setup
	WENZHI_DATA=$(DATA) $(PY) -m pytest -rs -q -n $(TEST_WORKERS)

# The main job end to end on CPU: KB import and linking, BM25 index, brief pretraining of a tiny
# encoder, fine-tuning of the SIM, NER and GEN heads, the fusion fit, evaluation of each answering
# path on KgCLUE dev (with and without 30 distractor relations per entity, SIM beside the lexical
# rule), then the REST service answering over HTTP. Everything lands in runs/demo/, which
# `wenzhi evaluate --model runs/demo/qa --kb runs/demo/kb.sqlite` and `wenzhi serve` take as they are;
# the NLPCC hold-out is one more evaluate (bench/RESULTS.md, issue 12, gives it with the recipes).
# OpenMP threads sleep instead of spinning at barriers: on a shared machine a spinning thread burns
# the CPU its descheduled partner needs (2 threads under load: 2x the work done per second with it).
demo: export OMP_WAIT_POLICY ?= PASSIVE
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
	# SIM: the relation-matching head (each relation token's best match in the question), 15 negatives
	# per question drawn as evaluation draws candidates, softmax over them, plus the relation prior
	# learned from the same questions (how often each relation is asked when offered); 400 steps:
	# with the prior as good as 600 on the train hold-outs (bench/RESULTS.md, issue 12, h12c)
	$(WENZHI) --data-dir $(DATA) finetune sim --kb $(DEMO)/kb.sqlite --output $(DEMO)/qa --init $(DEMO)/pretrain \
		--unfreeze --max-steps 400 --lr 2e-3 --threads 2
	$(WENZHI) --data-dir $(DATA) finetune ner --kb $(DEMO)/kb.sqlite --output $(DEMO)/qa --init $(DEMO)/qa/sim \
		--max-steps 150 --lr 2e-3 --threads 2
	# GEN: copies from the question, spells base name, relation, then disambiguation; 600 steps (2/3
	# of an epoch: the gold pair in the top beam for 0.93 of the KgCLUE train hold-out, 0.953 at 900)
	$(WENZHI) --data-dir $(DATA) finetune gen --kb $(DEMO)/kb.sqlite --output $(DEMO)/qa --init $(DEMO)/pretrain \
		--unfreeze --max-steps 600 --lr 2e-3 --threads 2
	# fusion weights that must hold both when only the KB's relations compete and with 30 distractors,
	# on KgCLUE train's last 1,000 questions; GEN weighed only where it wins significantly (fusion.py)
	$(WENZHI) --data-dir $(DATA) fit-fusion --kb $(DEMO)/kb.sqlite --model $(DEMO)/qa --limit 1000 \
		--distractor-relations 0,30 --threads 2
	$(WENZHI) evaluate --questions $(DATA)/kgclue/dev.json --kb $(DEMO)/kb.sqlite --model $(DEMO)/qa \
		--search $(DEMO)/bm25-entities --mode fused,pipeline,gen --distractor-relations 0,30 \
		--errors $(DEMO)/errors-dev.jsonl --threads 2 | tee $(DEMO)/eval-dev.jsonl
	$(PY) -m wenzhi.qa_service.eval_summary $(DEMO)/eval-dev.jsonl
	$(PY) -m wenzhi.qa_service.demo --model $(DEMO)/qa --kb $(DEMO)/kb.sqlite --search $(DEMO)/bm25-entities

clean:
	rm -rf $(DEMO)

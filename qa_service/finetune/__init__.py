"""`wenzhi finetune ner|sim|gen`: fine-tune the encoder's heads on KBQA questions.

Each task starts from a `wenzhi pretrain` checkpoint (any directory `from_pretrained` reads) or,
without one, from a fresh tiny config (tests). The universal module is frozen by default (ERNIE
3.0's fine-tuning), so the heads fine-tuned from one checkpoint share it bit for bit and the
service runs it once per question for all of them. Output: `OUT/<task>/` (weights, config,
vocab.txt, finetune.json with data coverage, losses and wall time).

Layout (litgpt's finetune/*.py sharing one args.py is the model):
    config.py   FinetuneConfig, the task names, fresh model sizes
    common.py   what every task shares: question loading, model construction, the training call,
                the atomic save of OUT/<task>/
    ner.py / sim.py / gen.py   one task each: its data, batches and loss (`setup`)
"""
from wenzhi.qa_service.finetune.common import build_model, finetune, training_questions
from wenzhi.qa_service.finetune.config import NER_LABELS, SIZES, TASKS, FinetuneConfig

__all__ = ["FinetuneConfig", "NER_LABELS", "SIZES", "TASKS", "build_model", "finetune", "training_questions"]

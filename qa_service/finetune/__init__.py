"""`wenzhi finetune ner|sim|gen`: fine-tune the encoder's heads on KBQA questions.

Each task starts from a `wenzhi pretrain` checkpoint (any directory `from_pretrained` reads) or,
without one, from a fresh tiny config (tests). The universal module is frozen by default (ERNIE
3.0's fine-tuning), so the heads fine-tuned from one checkpoint share it bit for bit and the
service runs it once per question for all of them. Output: `OUT/<task>/` (weights, config,
vocab.txt, finetune.json with data coverage, losses and wall time); the run's checkpoints and
curves in `OUT/training/<task>/`.

Layout (litgpt's finetune/*.py sharing one args.py is the model):
    config.py   FinetuneConfig, the task names, fresh model sizes
    common.py   what every task shares: question loading, model construction, the run on the
                training toolkit (model/training_loop.py), the atomic save of OUT/<task>/
    ner.py / sim.py / gen.py   one task each: its data, batches and loss (`setup` -> common.Task)

Only config.py is imported here eagerly: `wenzhi --help` and the kg commands do not load torch.
"""
import importlib

from wenzhi.qa_service.finetune.config import NER_LABELS, SIZES, TASKS, FinetuneConfig

_COMMON = ("Task", "build_model", "finetune", "training_questions")
__all__ = ["FinetuneConfig", "NER_LABELS", "SIZES", "TASKS", *_COMMON]


def __getattr__(name: str):
    if name in _COMMON:
        return getattr(importlib.import_module("wenzhi.qa_service.finetune.common"), name)
    raise AttributeError(f"module 'wenzhi.qa_service.finetune' has no attribute {name!r}")

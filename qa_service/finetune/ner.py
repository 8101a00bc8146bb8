"""The NER head: B/I/O tags of the question's entity mention, token classification."""
from __future__ import annotations

from wenzhi.model.conventions import IGNORE_INDEX
from wenzhi.qa_service.finetune.common import build_model
from wenzhi.qa_service.finetune.config import NER_LABELS, FinetuneConfig
from wenzhi.qa_service.heads import pad_rows


def setup(cfg: FinetuneConfig, tokenizer, examples, store, report: dict):
    """(model, number of training items, step function) of the NER head."""
    from wenzhi.model.modeling import WenzhiForTokenClassification

    from wenzhi.qa_service import data

    items, coverage = data.ner_examples(examples, store)
    report["coverage"] = coverage
    feats = data.ner_features(tokenizer, items)
    model = build_model(cfg, tokenizer, WenzhiForTokenClassification, num_labels=NER_LABELS)
    pad = tokenizer.pad_token_id

    def step(idx):
        ids = pad_rows([feats["input_ids"][i] for i in idx], pad)
        labels = pad_rows([feats["labels"][i] for i in idx], IGNORE_INDEX)
        return model(ids, attention_mask=(ids != pad).long(), labels=labels).loss

    return model, len(items), step

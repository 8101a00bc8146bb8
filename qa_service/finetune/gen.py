"""The GEN head: `[CLS] question [SEP]` -> the trie key `head [unused1] relation [SEP]`."""
from __future__ import annotations

from wenzhi.model.conventions import IGNORE_INDEX
from wenzhi.qa_service.finetune.common import build_model
from wenzhi.qa_service.finetune.config import FinetuneConfig
from wenzhi.qa_service.heads import pad_rows


def setup(cfg: FinetuneConfig, tokenizer, examples, store, report: dict):
    """(model, number of training items, step function) of the GEN head."""
    import torch
    from wenzhi.model.modeling import WenzhiForPrefixLM

    from wenzhi.qa_service import data

    feats = data.gen_features(tokenizer, examples, layout=cfg.target_layout)
    report["dropped_too_long"] = feats["dropped_too_long"]
    prefixes, targets = feats["prefix_ids"], feats["target_ids"]
    # both recorded in the head's config: serving reads them from there
    model = build_model(cfg, tokenizer, WenzhiForPrefixLM, copy_source=cfg.copy_source, target_layout=cfg.target_layout)
    pad = tokenizer.pad_token_id

    def step(idx):
        ids = pad_rows([prefixes[i] + targets[i] for i in idx], pad)
        labels = pad_rows([[IGNORE_INDEX] * len(prefixes[i]) + targets[i] for i in idx], IGNORE_INDEX)
        prefix_lengths = torch.as_tensor([len(prefixes[i]) for i in idx])
        return model(ids, prefix_lengths, attention_mask=(ids != pad).long(), labels=labels).loss

    return model, len(prefixes), step


def after_save(cfg: FinetuneConfig, folder, tokenizer, store, report: dict) -> None:
    """The trie is the GEN head's vocabulary of answers: built into the head's folder with it."""
    from wenzhi.qa_service.trie import ensure_trie

    report["trie"] = ensure_trie(folder, store, tokenizer, cfg.target_layout).meta

"""ERNIE-3.0-style encoder, its tokenizer and its knowledge-enhanced pretraining.

Names are resolved lazily so that `wenzhi kg ...` does not pay for importing torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "WenzhiConfig": "wenzhi.model.modeling",
    "WenzhiModel": "wenzhi.model.modeling",
    "WenzhiForPretraining": "wenzhi.model.modeling",
    "WenzhiForMaskedLM": "wenzhi.model.modeling",
    "WenzhiForTokenClassification": "wenzhi.model.modeling",
    "WenzhiForSequencePairClassification": "wenzhi.model.modeling",
    "WenzhiForPrefixLM": "wenzhi.model.modeling",
    "load_tokenizer": "wenzhi.model.tokenizer",
    "load_for_init": "wenzhi.model.pretrained",
    "checkpoint_tokenizer": "wenzhi.model.pretrained",
    "PackedExample": "wenzhi.model.shards",
    "ShardWriter": "wenzhi.model.shards",
    "ShardReader": "wenzhi.model.shards",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")

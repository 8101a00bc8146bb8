"""ERNIE-3.0-style encoder, its tokenizer and its knowledge-enhanced pretraining.

Names are resolved lazily so that `wenzhi kg ...` does not pay for importing torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "WenzhiConfig": "model.modeling",
    "WenzhiModel": "model.modeling",
    "WenzhiForPretraining": "model.modeling",
    "WenzhiForTokenClassification": "model.modeling",
    "WenzhiForSequencePairClassification": "model.modeling",
    "WenzhiForPrefixLM": "model.modeling",
    "load_tokenizer": "model.tokenizer",
    "PackedExample": "model.shards",
    "ShardWriter": "model.shards",
    "ShardReader": "model.shards",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")

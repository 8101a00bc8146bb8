"""KBQA service: fine-tuned NER/SIM/GEN heads, the answering pipeline, KgCLUE evaluation, REST API.

Names resolve lazily so that `wenzhi kg ...` does not import torch or FastAPI.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "QAPipeline": "wenzhi.qa_service.pipeline",
    "PipelineConfig": "wenzhi.qa_service.pipeline",
    "Answer": "wenzhi.qa_service.pipeline",
    "KBTrie": "wenzhi.qa_service.trie",
    "kgclue_scores": "wenzhi.qa_service.metric",
    "FinetuneConfig": "wenzhi.qa_service.finetune",
    "finetune": "wenzhi.qa_service.finetune",
    "evaluate": "wenzhi.qa_service.evaluate",
    "create_app": "wenzhi.qa_service.service",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'qa_service' has no attribute {name!r}")

"""KBQA service: fine-tuned NER/SIM/GEN heads, the answering pipeline, KgCLUE evaluation, REST API.

Names resolve lazily so that `wenzhi kg ...` does not import torch or FastAPI.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "QAPipeline": "qa_service.pipeline",
    "PipelineConfig": "qa_service.pipeline",
    "Answer": "qa_service.pipeline",
    "KBTrie": "qa_service.trie",
    "kgclue_scores": "qa_service.metric",
    "FinetuneConfig": "qa_service.finetune",
    "finetune": "qa_service.finetune",
    "evaluate": "qa_service.evaluate",
    "create_app": "qa_service.service",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'qa_service' has no attribute {name!r}")

"""Definitions that the data, the model and the tasks share: one place for each.

Imports nothing, so any layer above and the modeling code saved beside a checkpoint (which must run
without wenzhi installed) can import it.
"""
from __future__ import annotations

from enum import IntEnum

# Label of a position that no loss reads (torch's cross_entropy default ignore_index).
IGNORE_INDEX = -100


class ExampleKind(IntEnum):
    """What a pretraining example is, stored per row in the shards; the trainer reports the MLM
    loss per kind. TEXT: plain text with char/word masking; KNOWLEDGE: phrase/entity masking;
    UKTP: a text-triple pair (universal knowledge-text prediction); RETRIEVAL: text plus a
    retrieved knowledge segment."""

    TEXT = 0
    KNOWLEDGE = 1
    UKTP = 2
    RETRIEVAL = 3


EXAMPLE_KINDS = tuple(kind.name.lower() for kind in ExampleKind)  # ("text", "knowledge", "uktp", "retrieval")

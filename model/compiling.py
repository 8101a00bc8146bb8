"""`torch.compile` for pretraining: the model and its losses as one graph.

The MLM and LM heads project to the vocabulary only the positions they predict (gathered with a
boolean mask, whose size depends on the data). By default dynamo breaks the graph at such an
operator: the encoder and the heads were compiled apart, with a device sync between them. Letting
dynamo trace data-dependent output sizes (an unbacked size, one graph for every masked count)
keeps embeddings → layers → heads → loss in one graph; the single-document test of
`build_layout` (a sync that chooses the attention kernel) stays, at the very start of forward.
`tests/model/test_compiling.py` counts the graphs.
"""
from __future__ import annotations

import torch


def compile_for_training(model: torch.nn.Module, **compile_options) -> torch.nn.Module:
    """`torch.compile(model, **compile_options)` with data-dependent output sizes traced (a
    process-wide dynamo setting; it changes nothing for code that has no such operator)."""
    torch._dynamo.config.capture_dynamic_output_shape_ops = True
    return torch.compile(model, **compile_options)

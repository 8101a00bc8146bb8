"""`torch.compile` for pretraining, in one place: the trainer and bench/gpu_pretrain.py call this.

The MLM and LM heads project to the vocabulary only the positions they predict, gathered with a
boolean mask whose size depends on the data, so dynamo breaks the graph there: the encoder and the
heads compile apart (after the second masked count dynamo marks the size dynamic; the graphs stop
growing, tests/model/test_compiling.py). Letting dynamo trace that gather instead
(`torch._dynamo.config.capture_dynamic_output_shape_ops`, an unbacked size) makes the step one
graph, and was measured *slower* on an H200: BERT-large at sequence 512, bf16, 39.4% MFU against
42.7% with the breaks, in one device call (bench/RESULTS.md, seventh session). So the breaks stay;
the heads' losses still avoid branching on their counts (sums over clamped counts), which costs nothing.
"""
from __future__ import annotations

import torch


def compile_for_training(model: torch.nn.Module, **compile_options) -> torch.nn.Module:
    """`torch.compile(model, **compile_options)` as pretraining uses it (the default dynamo settings,
    measured against one-graph tracing above)."""
    return torch.compile(model, **compile_options)

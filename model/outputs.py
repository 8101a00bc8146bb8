"""Output types of the encoder and its heads (standard transformers outputs are used where one fits)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class UniversalOutput(ModelOutput):
    """The shared module's output plus the layout it was computed under (heads reuse both).
    `rotary` is (cos, sin), or (None, None) for absolute positions; `hidden_states_per_layer` holds
    the embeddings' and each universal layer's output when asked for (output_hidden_states)."""

    hidden_states: torch.Tensor | None = None
    layout: "AttentionLayout | None" = None  # modeling.AttentionLayout
    rotary: tuple | None = None
    hidden_states_per_layer: list | None = None


@dataclass
class WenzhiPretrainingOutput(ModelOutput):
    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None  # [num_masked, V]: only masked positions are projected
    kind_loss_sum: torch.Tensor | None = None  # [num_kinds] summed MLM loss per example kind (detached)
    kind_count: torch.Tensor | None = None  # [num_kinds] masked tokens per kind
    mlm_correct: torch.Tensor | None = None  # number of masked tokens predicted right
    logits: torch.Tensor | None = None  # [B, L, V] MLM logits of every position, given when labels are not
    hidden_states: tuple | None = None  # NLU path, with output_hidden_states


@dataclass
class PrefixLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


@dataclass
class GenerationResult:
    sequences: torch.Tensor  # long [B, R, T] generated target tokens (pad after eos)
    scores: torch.Tensor  # float [B, R] sum of log-probabilities / length ** length_penalty

"""The copy (pointer) mechanism of the prefix-LM generator: a distribution over the source's tokens
mixed into the next-token distribution (model.modeling.WenzhiForPrefixLM with `config.copy_source`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class CopyHead(nn.Module):
    """A pointer over the source tokens mixed with the LM head (See et al., 2017, "Get to the point"):
    p(w) = g·p_vocab(w) + (1 − g)·Σ_{s: source_s = w} attention(target → s), g = σ(gate(hidden)).
    A KBQA answer's head is verbatim in the question almost always, and copying it is one attention
    step instead of a vocabulary the generator must first learn to map the question onto.
    Hand-written: transformers has no pointer-generator head for an encoder with a prefix-LM mask."""

    def __init__(self, config):
        super().__init__()
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.gate = nn.Linear(config.hidden_size, 1)

    def forward(self, target: torch.Tensor, vocab_logits: torch.Tensor, source: torch.Tensor,
                source_ids: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
        """target [N, H] states predicting a token, vocab_logits [N, V], source [N, S, H] states of
        each one's source tokens, source_ids [N, S], source_mask [N, S] (True = may be copied)
        -> log-probabilities [N, V] of the mixture."""
        scores = torch.einsum("nh,nsh->ns", self.query(target), self.key(source)) / math.sqrt(target.shape[-1])
        scores = scores.float().masked_fill(~source_mask, float("-inf"))
        attention = torch.softmax(scores, -1).nan_to_num(0.0)  # a row without copyable tokens: zeros
        copy = torch.zeros_like(vocab_logits, dtype=torch.float).scatter_add_(1, source_ids, attention)
        gate = F.logsigmoid(self.gate(target).float())  # log g, [N, 1]
        from_vocab = gate + F.log_softmax(vocab_logits.float(), -1)
        from_source = F.logsigmoid(-self.gate(target).float()) + torch.log(copy.clamp_min(1e-30))
        return torch.logaddexp(from_vocab, from_source)


@dataclass
class SourceStates:
    """What a copying generator reads at every decoding step: its source tokens' states."""

    hidden_states: torch.Tensor  # [N, S, H]
    input_ids: torch.Tensor  # [N, S]
    copyable: torch.Tensor  # bool [N, S]: real source tokens other than [CLS]/[SEP]/padding

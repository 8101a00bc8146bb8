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

    def _parts(self, target, source, source_mask):
        """(log g [N, 1], log (1 − g) [N, 1], attention over the source [N, S])."""
        scores = torch.einsum("nh,nsh->ns", self.query(target), self.key(source)) / math.sqrt(target.shape[-1])
        scores = scores.float().masked_fill(~source_mask, float("-inf"))
        attention = torch.softmax(scores, -1).nan_to_num(0.0)  # a row without copyable tokens: zeros
        gate = self.gate(target).float()
        return F.logsigmoid(gate), F.logsigmoid(-gate), attention

    def forward(self, target: torch.Tensor, vocab_logits: torch.Tensor, source: torch.Tensor,
                source_ids: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
        """target [N, H] states predicting a token, vocab_logits [N, V], source [N, S, H] states of
        each one's source tokens, source_ids [N, S], source_mask [N, S] (True = may be copied)
        -> log-probabilities [N, V] of the mixture."""
        log_g, log_not_g, attention = self._parts(target, source, source_mask)
        logprobs = log_g + F.log_softmax(vocab_logits.float(), -1)
        # the copy mass of each source token's id (summed over its occurrences) enters at those ids
        # only: [N, S, S] comparisons instead of a log and a logaddexp over the whole vocabulary
        mass = (attention[:, None, :] * (source_ids[:, :, None] == source_ids[:, None, :])).sum(-1)
        mixed = torch.logaddexp(logprobs.gather(1, source_ids), log_not_g + torch.log(mass.clamp_min(1e-30)))
        return logprobs.scatter(1, source_ids, mixed)

    def token_logprob(self, target: torch.Tensor, vocab_logits: torch.Tensor, source: torch.Tensor,
                      source_ids: torch.Tensor, source_mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """log p(tokens) [N] under the mixture, without building it: the training loss needs the
        gold tokens only, and the [N, V] scatter/log/logaddexp made a step about 4x slower."""
        log_g, log_not_g, attention = self._parts(target, source, source_mask)
        logits = vocab_logits.float()
        from_vocab = logits.gather(1, tokens[:, None]).squeeze(1) - torch.logsumexp(logits, -1)
        copied = (attention * (source_ids == tokens[:, None])).sum(-1)
        return torch.logaddexp(log_g.squeeze(1) + from_vocab, log_not_g.squeeze(1) + torch.log(copied.clamp_min(1e-30)))


@dataclass
class SourceStates:
    """What a copying generator reads at every decoding step: its source tokens' states."""

    hidden_states: torch.Tensor  # [N, S, H]
    input_ids: torch.Tensor  # [N, S]
    copyable: torch.Tensor  # bool [N, S]: real source tokens other than [CLS]/[SEP]/padding

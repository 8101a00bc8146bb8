"""The relation-matching (SIM) head: token-level late interaction between a question and relation names.

    question ──universal──NLU──> token states ──proj, unit length──> Q [Lq, d]  (mention tokens left out)
    relation ──universal──NLU──> token states ──proj, unit length──> R [Lr, d]  (encoded alone: cacheable)
    score(q, r) = scale · mean_i max_j R_i·Q_j  +  prior(relation's [CLS] state)

ColBERT's MaxSim (Khattab & Zaharia, 2020) over the encoder's own states: each relation token looks
for its most similar question token. Identical characters start out similar, so the head begins
where the lexical rule ends (a share of the relation found in the question) and learns paraphrases,
which tokens matter and a per-relation prior from there; a [CLS]-classifier over one attention step
(the "late" pair head) has to discover matching from scratch and, trained as briefly as the demo
trains, stayed below the lexical rule (bench/RESULTS.md, issue 12). Relations never see the question,
so everything about a relation is computed once per name; per question only the dot products remain.
Hand-written: a MaxSim scorer over this encoder's layers is a few tensor operations, and ColBERT's
implementation is a retrieval engine around a BERT checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .modeling import UniversalOutput, WenzhiModel, WenzhiPreTrainedModel

MATCH_SCALE = 20.0  # cosine similarities times 20: a softmax temperature of 0.05, as in SimCSE


@dataclass
class MatchStates:
    """Unit token vectors of texts, which of their tokens take part, and (relations) their prior."""

    vectors: torch.Tensor  # [N, L, d]
    mask: torch.Tensor  # bool [N, L]: no [CLS]/[SEP]/padding, nor a question's entity mention
    prior: torch.Tensor  # [N]: the relation prior read from the [CLS] state (unused for questions)

    def select(self, index: torch.Tensor) -> "MatchStates":
        """The rows `index` (any shape) in that shape. By index_select, not `vectors[index]`: the
        gradient of advanced indexing adds the rows of repeated indices in whatever order CPU threads
        reach them, so SIM fine-tuning on 2 threads gave different weights run to run."""
        flat = index.reshape(-1)

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, flat).view(*index.shape, *t.shape[1:])

        return MatchStates(pick(self.vectors), pick(self.mask), pick(self.prior))


class WenzhiForRelationMatching(WenzhiPreTrainedModel):
    """Scores candidate relations of questions (see the module docstring). `forward` takes questions
    and a table of `[CLS] relation [SEP]` rows with each question's candidates as indices into it;
    the logits are [B, C] and the loss (with `labels`, the gold column) is softmax cross-entropy
    over each question's candidates."""

    def __init__(self, config):
        super().__init__(config)
        self.wenzhi = WenzhiModel(config)
        self.match_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.prior = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def match_states(self, universal_output: UniversalOutput, input_ids: torch.Tensor,
                     token_mask: torch.Tensor | None = None) -> MatchStates:
        """MatchStates of texts whose universal pass is given (the pipeline shares it with NER);
        `token_mask` [N, L] leaves further tokens out (False), e.g. a question's entity mention."""
        hidden = self.wenzhi.nlu(universal_output)
        config = self.config
        mask = (input_ids != config.pad_token_id) & (input_ids != config.cls_token_id) & (
            input_ids != config.sep_token_id) & (universal_output.layout.document_ids >= 0)
        if token_mask is not None:
            mask &= token_mask.bool()
        vectors = F.normalize(self.match_proj(hidden), dim=-1)
        return MatchStates(vectors, mask, self.prior(hidden[:, 0]).squeeze(-1).float())

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_mask: torch.Tensor | None = None) -> MatchStates:
        """Texts encoded alone (questions, or `[CLS] relation [SEP]` rows), padded on the right."""
        if attention_mask is None:
            attention_mask = (input_ids != self.config.pad_token_id).long()
        out = self.wenzhi.universal(input_ids, attention_mask=attention_mask)
        return self.match_states(out, input_ids, token_mask)

    @staticmethod
    def score(questions: MatchStates, relations: MatchStates, candidates: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] of question b against relation `candidates[b, c]` (-1: none, -inf)."""
        valid = candidates >= 0
        rel = relations.select(candidates.clamp(min=0))  # [B, C, Lr, d]
        sim = torch.einsum("bcrd,bqd->bcrq", rel.vectors, questions.vectors)
        sim = sim.masked_fill(~questions.mask[:, None, None, :], -1.0).amax(-1)  # best question token
        weight = rel.mask.float()
        maxsim = (sim * weight).sum(-1) / weight.sum(-1).clamp(min=1.0)
        logits = MATCH_SCALE * maxsim.float() + rel.prior
        return logits.masked_fill(~valid, float("-inf"))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                relation_input_ids: torch.Tensor | None = None,
                relation_attention_mask: torch.Tensor | None = None, candidates: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, token_mask: torch.Tensor | None = None):
        if relation_input_ids is None or candidates is None:
            raise ValueError("relation_input_ids and candidates are required")
        questions = self.encode(input_ids, attention_mask, token_mask)
        relations = self.encode(relation_input_ids, relation_attention_mask)
        logits = self.score(questions, relations, candidates)
        loss = F.cross_entropy(logits, labels.long()) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

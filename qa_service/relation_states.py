"""Serving routes of SIM heads whose relations are encoded apart from the question, so that what a
relation contributes is computed once per name and kept.

- A relation-matching head (model/relation_matching.py, the default): `RelationMatchTable` holds every
  relation's token vectors and prior; per question only the question's states and dot products remain.
- A late-interaction pair head (`pair_interaction="late"`): a relation segment `[CLS] relation [SEP]`
  passes the universal layers attending only to itself, so its universal states depend on the
  relation name alone (rotary attention sees only relative positions, so where the segment sits in
  a row does not matter either). `RelationStates` keeps them; per question only the NLU layers run
  (the model's `nlu_extend`, against the question's cached NLU keys/values), their last layer only at
  each segment's [CLS] (the one token the classifier reads).

A KB has a few thousand relation names (6,765 in ours) against ~31 candidates x ~6 tokens per
question, so this removes the universal layers from the per-question cost of relation scoring.
Hand-written: the split of one pair encoder into a cached half and a per-question half is this
project's design (ERNIE 3.0's universal module shared, its task module doing the interaction). The
model's own inference methods do the layer work; nothing here reaches into its blocks.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

from wenzhi.qa_service.heads import pad_rows
from wenzhi.qa_service.packing import (RELATION_TYPE, QuestionEncoding, layout_for, relation_segments,
                                       segment_rows, segment_width)


def relation_scorer(model, tokenizer, prior=None) -> "RelationStates | RelationMatchTable":
    """The cache that scores relations for a relation-matching head (with its learned relation
    `prior`, qa_service/relation_prior.py, if any) or a late pair head."""
    from wenzhi.model.relation_matching import WenzhiForRelationMatching

    if isinstance(model, WenzhiForRelationMatching):
        return RelationMatchTable(model, tokenizer, prior)
    if prior is not None:
        raise ValueError("a relation prior is fitted for relation-matching SIM heads only")
    if not model.config.position_independent_segments:
        raise ValueError("cached relation states need rotary positions and pre-LN blocks (a segment's states must not "
                         "depend on where it sits); this SIM head is BERT-style: fine-tune it with --interaction full")
    return RelationStates(model, tokenizer)


class RelationStates:
    """Universal states [width, H] of each relation's segment (padded to its width bucket), LRU-bounded."""

    def __init__(self, model, tokenizer, capacity: int = 100_000):
        self.model, self.tokenizer, self.capacity = model, tokenizer, capacity
        self._states: OrderedDict[str, tuple[torch.Tensor, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def warm(self, relations: Sequence[str]) -> None:
        self.get(relations)

    def score(self, enc: QuestionEncoding, relations: Sequence[Sequence[str]]) -> torch.Tensor:
        return score_relations_late(self.model, enc, relations, self)

    def get(self, relations: Sequence[str]) -> list[tuple[torch.Tensor, int]]:
        """(states [bucket width, H], segment length) per relation, computing the missing ones."""
        missing = [r for r in dict.fromkeys(relations) if r not in self._states]
        for start in range(0, len(missing), 512):
            self._compute(missing[start : start + 512])
        out = []
        for r in relations:
            self._states.move_to_end(r)
            out.append(self._states[r])
        while len(self._states) > self.capacity:
            self._states.popitem(last=False)
        return out

    def _compute(self, names: list[str]) -> None:
        segs = relation_segments(self.tokenizer, names)
        ids = pad_rows(segs, self.tokenizer.pad_token_id)  # [n, L]
        lengths = torch.as_tensor([len(s) for s in segs])
        docs = torch.where(torch.arange(ids.shape[1]) < lengths[:, None], 1, -1)
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        out = self.model.wenzhi.universal(ids, torch.full_like(ids, RELATION_TYPE),
                                          layout=layout_for(docs, positions, see_question=False))
        hidden = out.hidden_states
        for i, (name, n) in enumerate(zip(names, lengths.tolist())):
            state = hidden.new_zeros(segment_width(n, n), hidden.shape[-1])
            state[:n] = hidden[i, :n]
            self._states[name] = (state, n)


def score_relations_late(model, enc: QuestionEncoding, relations: Sequence[Sequence[str]],
                         states: RelationStates) -> torch.Tensor:
    """SIM logit per (question, relation), flattened in order; equals the packed route
    (`universal_packed` + NLU + `sim_logits`) of a late model (tests/qa/test_qa_packing.py)."""
    flat = [r for rels in relations for r in rels]
    if not flat:
        return torch.empty(0)
    base = model.wenzhi
    owner_all = [b for b, rels in enumerate(relations) for _ in rels]
    q_len_all = torch.as_tensor(enc.lengths, dtype=torch.long)
    nlu_caches = base.nlu_prefix_cache(enc.universal)
    got = states.get(flat)
    buckets: dict[int, list[int]] = {}
    for i, (state, _) in enumerate(got):
        buckets.setdefault(state.shape[0], []).append(i)
    out = torch.empty(len(flat))
    cls_only = torch.zeros(1, dtype=torch.long)
    for width, rows in buckets.items():
        owner = torch.as_tensor([owner_all[i] for i in rows], dtype=torch.long)
        x = torch.stack([got[i][0] for i in rows])  # [n, width, H]
        mask, positions = segment_rows(q_len_all[owner], torch.as_tensor([got[i][1] for i in rows]),
                                       enc.input_ids.shape[1], width)
        x = base.nlu_extend(x, positions, mask, nlu_caches, rows=owner, last_queries=cls_only)
        out[torch.as_tensor(rows)] = model.pair_logits(x[:, 0]).squeeze(-1).float()
    return out


class RelationMatchTable:
    """For a relation-matching SIM head (model/relation_matching.py): every relation's token vectors
    and prior, computed once per name, as one table [relations, width, d]; per question only the
    question's own states and the dot products with its candidates' rows remain. A `RelationPrior`
    adds its bias to each relation's row once, as the model's own name-read prior is added."""

    def __init__(self, model, tokenizer, prior=None):
        self.model, self.tokenizer, self.prior = model, tokenizer, prior
        self.slot: dict[str, int] = {}
        self.table = None  # MatchStates over every slot

    def __len__(self) -> int:
        return len(self.slot)

    def warm(self, relations: Sequence[str]) -> None:
        self.slots(relations)

    def slots(self, relations: Sequence[str]) -> torch.Tensor:
        missing = [r for r in dict.fromkeys(relations) if r not in self.slot]
        for start in range(0, len(missing), 512):
            self._add(missing[start : start + 512])
        return torch.as_tensor([self.slot[r] for r in relations], dtype=torch.long)

    def _add(self, names: list[str]) -> None:
        from wenzhi.model.relation_matching import MatchStates

        ids = pad_rows(relation_segments(self.tokenizer, names), self.tokenizer.pad_token_id)
        new = self.model.encode(ids)
        if self.prior is not None:
            new.prior = new.prior + torch.as_tensor(self.prior.bias(names), dtype=new.prior.dtype)
        if self.table is not None:  # one width for the whole table: pad the narrower part's tokens
            old, width = self.table, max(self.table.mask.shape[1], new.mask.shape[1])
            new = MatchStates(torch.cat([_widen(old.vectors, width), _widen(new.vectors, width)]),
                              torch.cat([_widen(old.mask, width), _widen(new.mask, width)]),
                              torch.cat([old.prior, new.prior]))
        self.table = new
        for name in names:
            self.slot[name] = len(self.slot)

    def score(self, enc: QuestionEncoding, relations: Sequence[Sequence[str]],
              token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logit per (question, relation), flattened in order; `token_mask` [B, Lq] leaves tokens out."""
        flat = [r for rels in relations for r in rels]
        if not flat:
            return torch.empty(0)
        slots = self.slots(flat).tolist()
        candidates, i = [], 0
        for rels in relations:
            candidates.append(slots[i : i + len(rels)])
            i += len(rels)
        candidates = pad_rows(candidates, -1)
        questions = self.model.match_states(enc.universal, enc.input_ids, token_mask)
        logits = self.model.score(questions, self.table, candidates)
        return logits[candidates >= 0]


def _widen(t: torch.Tensor, width: int) -> torch.Tensor:
    """[N, L, ...] -> [N, width, ...], zeros (False) after the first L tokens."""
    pad = [0, 0] * (t.dim() - 2) + [0, width - t.shape[1]]
    return torch.nn.functional.pad(t, pad)

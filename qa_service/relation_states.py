"""Serving route of a late-interaction SIM head (`pair_interaction="late"`).

In a late model a relation segment `[CLS] relation [SEP]` passes the universal layers attending only
to itself, so its universal states depend on the relation name alone (rotary attention sees only
relative positions, so where the segment sits in a row does not matter either). `RelationStates`
computes them once per name and keeps them; per question only the NLU layers run, and their last
layer only at each segment's [CLS] (the one token the classifier reads). A KB has a few thousand
relation names (6,765 in ours) against ~31 candidates × ~6 tokens per question, so this removes the
universal layers from the per-question cost of relation scoring. Hand-written: the split of one
pair encoder into a cached half and a per-question half is this project's design (ERNIE 3.0's
universal module shared, its task module doing the interaction).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch

from wenzhi.model.modeling import apply_rotary, rotary_tables
from wenzhi.qa_service.heads import pad_rows
from wenzhi.qa_service.packing import (RELATION_TYPE, QuestionEncoding, layout_for, question_nlu_caches,
                                relation_segments, segment_rows, segment_width)


def relation_scorer(model, tokenizer) -> "RelationStates | RelationSummaries | RelationMatchTable":
    """The cache that scores relations for a relation-matching head, or a late pair head: summaries
    with one NLU layer, else states."""
    from wenzhi.model.relation_matching import WenzhiForRelationMatching

    if isinstance(model, WenzhiForRelationMatching):
        return RelationMatchTable(model, tokenizer)
    if not model.config.position_independent_segments:
        raise ValueError("cached relation states need rotary positions and pre-LN blocks (a segment's states must not "
                         "depend on where it sits); this SIM head is BERT-style: fine-tune it with --interaction full")
    one_layer = len(model.wenzhi.nlu_layers) == 1
    return (RelationSummaries if one_layer else RelationStates)(model, tokenizer)


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
    nlu_caches = question_nlu_caches(model, enc)
    got = states.get(flat)
    buckets: dict[int, list[int]] = {}
    for i, (state, _) in enumerate(got):
        buckets.setdefault(state.shape[0], []).append(i)
    out = torch.empty(len(flat))
    last = len(base.nlu_layers) - 1
    cls_only = torch.zeros(1, dtype=torch.long)
    for width, rows in buckets.items():
        owner = torch.as_tensor([owner_all[i] for i in rows], dtype=torch.long)
        x = torch.stack([got[i][0] for i in rows])  # [n, width, H]
        mask, cos, sin = segment_rows(model, q_len_all[owner], torch.as_tensor([got[i][1] for i in rows]),
                                      enc.input_ids.shape[1], width, x.dtype)
        for i, (block, cache) in enumerate(zip(base.nlu_layers, nlu_caches)):
            kv = {"k": cache["k"].index_select(0, owner), "v": cache["v"].index_select(0, owner)}
            x = block(x, cos, sin, mask, kv, queries=cls_only if i == last else None)
        pooled = torch.tanh(model.pooler(base.nlu_norm(x[:, 0])))
        out[torch.as_tensor(rows)] = model.classifier(model.dropout(pooled)).squeeze(-1).float()
    return out


class RelationSummaries:
    """For a late SIM head with one NLU layer: everything about a relation that the question does
    not change, as dense tables indexed by slot.

    That layer is read only at the segment's [CLS], whose attention splits into the question's keys
    and the segment's own. Rotary scores depend on relative positions only, so the [CLS]-to-segment
    scores do not depend on where the segment sits, and that half of the softmax is summarised per
    relation as flash attention does (max m, sum Z = Σ exp(s - m), A = Σ exp(s - m) v); per question
    only the [CLS] query rotated to its position meets the question's keys, and the two halves are
    merged. Per (question, relation) that is a dot product over the question plus one token's
    output projection and feed-forward."""

    def __init__(self, model, tokenizer):
        if len(model.wenzhi.nlu_layers) != 1:
            raise ValueError("RelationSummaries needs a SIM head with exactly one NLU layer")
        self.model, self.states = model, RelationStates(model, tokenizer, capacity=0)
        self.slot: dict[str, int] = {}
        self.tables: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.slot)

    def warm(self, relations: Sequence[str]) -> None:
        self.slots(relations)

    def score(self, enc: QuestionEncoding, relations: Sequence[Sequence[str]]) -> torch.Tensor:
        return score_relations_summarised(self.model, enc, relations, self)

    def slots(self, relations: Sequence[str]) -> torch.Tensor:
        missing = [r for r in dict.fromkeys(relations) if r not in self.slot]
        for start in range(0, len(missing), 512):
            self._add(missing[start : start + 512])
        return torch.as_tensor([self.slot[r] for r in relations], dtype=torch.long)

    def _add(self, names: list[str]) -> None:
        base = self.model.wenzhi
        block, attn = base.nlu_layers[0], base.nlu_layers[0].attn
        nh, hd = attn.num_heads, attn.head_dim
        got = self.states.get(names)  # capacity 0: computed, handed over, not kept
        width = max(s.shape[0] for s, _ in got)
        x = torch.stack([torch.nn.functional.pad(s, (0, 0, 0, width - s.shape[0])) for s, _ in got])  # [n, w, H]
        lengths = torch.as_tensor([n for _, n in got])
        q, k, v = attn.qkv(block.attn_norm(x)).view(len(names), width, 3, nh, hd).permute(2, 0, 3, 1, 4)
        cos, sin = rotary_tables(torch.arange(width).expand(len(names), width), hd, base.config.rope_theta, x.dtype)
        k = apply_rotary(k, cos, sin)  # [n, nh, w, hd]; the [CLS] query stays at position 0 (unrotated)
        scores = torch.einsum("nhd,nhwd->nhw", q[:, :, 0], k) / math.sqrt(hd)
        scores = scores.masked_fill((torch.arange(width) >= lengths[:, None])[:, None], float("-inf"))
        m = scores.amax(-1)  # [n, nh]
        p = torch.exp(scores - m[..., None])
        new = {"query": q[:, :, 0], "m": m, "z": p.sum(-1), "a": torch.einsum("nhw,nhwd->nhd", p, v),
               "cls": x[:, 0]}
        for key, value in new.items():
            self.tables[key] = value if key not in self.tables else torch.cat([self.tables[key], value])
        for name in names:
            self.slot[name] = len(self.slot)


def score_relations_summarised(model, enc: QuestionEncoding, relations: Sequence[Sequence[str]],
                               summaries: RelationSummaries) -> torch.Tensor:
    """Same logits as `score_relations_late` for a one-NLU-layer head, from `RelationSummaries`."""
    flat = [r for rels in relations for r in rels]
    if not flat:
        return torch.empty(0)
    base = model.wenzhi
    block, attn = base.nlu_layers[0], base.nlu_layers[0].attn
    nh, hd = attn.num_heads, attn.head_dim
    # the question's keys/values in the NLU layer [B, nh, Lq, hd]; its queries and outputs are not needed
    x = block.attn_norm(enc.universal.hidden_states)
    width = x.shape[-1]
    k, v = torch.nn.functional.linear(x, attn.qkv.weight[width:], attn.qkv.bias[width:]).view(
        x.shape[0], x.shape[1], 2, nh, hd).permute(2, 0, 3, 1, 4)
    cache = {"k": apply_rotary(k, *enc.universal.rotary).to(v.dtype), "v": v}
    slots = summaries.slots(flat)
    t = {key: value.index_select(0, slots) for key, value in summaries.tables.items()}
    owner = torch.as_tensor([b for b, rels in enumerate(relations) for _ in rels], dtype=torch.long)
    q_len = torch.as_tensor(enc.lengths, dtype=torch.long)[owner]
    cos, sin = rotary_tables(q_len[:, None], hd, base.config.rope_theta, t["query"].dtype)  # [n, 1, 1, hd]
    query = apply_rotary(t["query"][:, :, None], cos, sin)[:, :, 0]  # at the [CLS]'s position: [n, nh, hd]
    # the question half, grouped by question so its keys are read in place: [B, M, nh, hd] x [B, nh, Lq, hd]
    B, M = len(relations), max(len(rels) for rels in relations)
    col = torch.as_tensor([i for rels in relations for i in range(len(rels))], dtype=torch.long)
    grouped = query.new_zeros(B, M, nh, hd)
    grouped[owner, col] = query
    s_q = torch.einsum("bmhd,bhld->bmhl", grouped, cache["k"])[owner, col] / math.sqrt(hd)  # [n, nh, Lq]
    s_q = s_q.masked_fill((torch.arange(s_q.shape[-1]) >= q_len[:, None])[:, None], float("-inf"))
    m = torch.maximum(s_q.amax(-1), t["m"])  # [n, nh]
    p_q = torch.exp(s_q - m[..., None])
    seg_scale = torch.exp(t["m"] - m)
    weighted = torch.zeros(B, M, nh, s_q.shape[-1], dtype=p_q.dtype)
    weighted[owner, col] = p_q
    a_q = torch.einsum("bmhl,bhld->bmhd", weighted, cache["v"])[owner, col]  # [n, nh, hd]
    y = (a_q + seg_scale[..., None] * t["a"]) / (p_q.sum(-1) + seg_scale * t["z"])[..., None]
    x = t["cls"] + attn.out(y.reshape(len(flat), nh * hd))
    x = x + block.ffn(block.ffn_norm(x))
    pooled = torch.tanh(model.pooler(base.nlu_norm(x)))
    return model.classifier(model.dropout(pooled)).squeeze(-1).float()


class RelationMatchTable:
    """For a relation-matching SIM head (model/relation_matching.py): every relation's token vectors
    and prior, computed once per name, as one table [relations, width, d]; per question only the
    question's own states and the dot products with its candidates' rows remain."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
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

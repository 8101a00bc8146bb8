"""One universal pass per question, shared by NER and by the scoring of every candidate relation.

A question and its candidate relations form one row: `[CLS] q [SEP] [CLS] r1 [SEP] [CLS] r2 [SEP] …`.
Question tokens attend only to the question; each relation segment attends to the question and to
itself, with positions continuing after the question as in a `[CLS] q [SEP] r [SEP]` pair. So the
question's hidden states do not depend on the relations: at serving time the universal module runs
once over the question (its keys/values cached), NER reads it, the linker and the KB then supply
the candidate relations, and only their segments go through the universal layers, attending to the
cached question. The NLU branch then runs over the joined row. Training (`packed_batch`) builds the
same row in one pass; `tests/qa/test_qa_model.py` checks that both routes give the same scores.
Hand-written because this layout (a shared prefix with independent suffixes) is this project's way
of scoring many relations per question at the cost of one question encoding (OBERT's idea).

That is the "full" SIM head (`pair_interaction="full"`). A "late" head (the default of `wenzhi
finetune sim`) keeps relation segments apart from the question in the universal layers and lets
them meet it in the NLU layers only; the same rows and functions train it (`universal_packed`
switches the mask), and `relation_states.py` serves it from per-relation caches.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from wenzhi.model.modeling import AttentionLayout, UniversalOutput
from wenzhi.qa_service.heads import pad_rows

QUESTION_TYPE, RELATION_TYPE = 0, 1


def layout_for(document_ids: torch.Tensor, positions: torch.Tensor,
               key_document_ids: torch.Tensor | None = None, see_question: bool = True) -> AttentionLayout:
    """Queries `document_ids` [B, Lq] over keys `key_document_ids` [B, Lk] (default: the same):
    a query of segment d >= 1 sees segment 0 (the question) and d (only d without `see_question`);
    the question sees itself; padding (-1) sees padding, so no row of the mask is empty."""
    keys = document_ids if key_document_ids is None else key_document_ids
    q = document_ids[:, :, None]
    k = keys[:, None, :]
    mask = (q == k) | ((k == 0) & (q >= 0)) if see_question else (q == k)
    return AttentionLayout(mask[:, None], positions, document_ids, False)


def is_late(model) -> bool:
    """True for a SIM head whose relation segments meet the question only in the NLU layers."""
    return getattr(model.config, "pair_interaction", "full") == "late"


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [B, L]
    token_type_ids: torch.Tensor
    document_ids: torch.Tensor  # 0 question, 1..k relation segments, -1 padding
    positions: torch.Tensor
    segment_starts: list[list[int]]  # per row, index of each relation segment's [CLS]
    question_lengths: list[int]


_SEGMENT_CACHE: dict[tuple[int, str], list[int]] = {}


def relation_segments(tokenizer, relations: Sequence[str], max_relation_tokens: int = 16) -> list[list[int]]:
    """`[CLS] relation [SEP]` ids; memoised because a KB has a few thousand relation names and
    tokenising them again for every question costs more than scoring them."""
    key = id(tokenizer)
    missing = [r for r in dict.fromkeys(relations) if (key, r) not in _SEGMENT_CACHE]
    if missing:
        if len(_SEGMENT_CACHE) > 200_000:
            _SEGMENT_CACHE.clear()
        for rel, ids in zip(missing, tokenizer(missing, add_special_tokens=False)["input_ids"]):
            _SEGMENT_CACHE[(key, rel)] = [tokenizer.cls_token_id, *ids[:max_relation_tokens], tokenizer.sep_token_id]
    return [_SEGMENT_CACHE[(key, r)] for r in relations]


def packed_batch(question_ids: Sequence[Sequence[int]], segments: Sequence[Sequence[Sequence[int]]],
                 pad_id: int = 0) -> PackedBatch:
    """Full rows (question + its relation segments) for training or one-pass scoring."""
    ids, types, docs, pos, starts = [], [], [], [], []
    for q, segs in zip(question_ids, segments):
        row_ids, row_types, row_docs, row_pos, row_starts = list(q), [QUESTION_TYPE] * len(q), [0] * len(q), list(range(len(q))), []
        for d, seg in enumerate(segs, 1):
            row_starts.append(len(row_ids))
            row_ids += seg
            row_types += [RELATION_TYPE] * len(seg)
            row_docs += [d] * len(seg)
            row_pos += list(range(len(q), len(q) + len(seg)))
        ids.append(row_ids); types.append(row_types); docs.append(row_docs); pos.append(row_pos); starts.append(row_starts)
    return PackedBatch(pad_rows(ids, pad_id), pad_rows(types, 0), pad_rows(docs, -1), pad_rows(pos, 0), starts,
                       [len(q) for q in question_ids])


def universal_packed(model, batch: PackedBatch) -> UniversalOutput:
    """One universal pass over full packed rows (training and the reference route). For a late
    model the segments are encoded apart, and the returned layout (read by the NLU layers) lets
    them see the question."""
    together = layout_for(batch.document_ids, batch.positions)
    if not is_late(model):
        return model.wenzhi.universal(batch.input_ids, batch.token_type_ids, layout=together)
    apart = layout_for(batch.document_ids, batch.positions, see_question=False)
    out = model.wenzhi.universal(batch.input_ids, batch.token_type_ids, layout=apart)
    out.layout = together
    return out


def gather_segment_cls(hidden: torch.Tensor, starts: Sequence[Sequence[int]]) -> torch.Tensor:
    rows = torch.as_tensor([b for b, s in enumerate(starts) for _ in s], dtype=torch.long)
    cols = torch.as_tensor([i for s in starts for i in s], dtype=torch.long)
    return hidden[rows, cols]


def sim_logits(sim_model, nlu_hidden: torch.Tensor, starts) -> torch.Tensor:
    """One logit per relation segment, from the SIM head's own pooler and classifier."""
    return sim_model.pair_logits(gather_segment_cls(nlu_hidden, starts)).squeeze(-1)


# -- serving route: question once, then relation segments against its cached keys/values ------
@dataclass
class QuestionEncoding:
    universal: UniversalOutput  # over the question rows only (bidirectional)
    caches: list[dict] | None  # per universal layer: keys/values of the question tokens (full route)
    input_ids: torch.Tensor
    document_ids: torch.Tensor  # 0 on question tokens, -1 on padding
    lengths: list[int]
    packed: "PackedQuestions | None" = None


@dataclass
class PackedQuestions:
    """Questions laid end to end in a few rows (each attending only to itself), and where each
    question token sits in them: `universal.hidden_states[rows, cols]` is the question tokens in order."""
    universal: UniversalOutput
    rows: torch.Tensor  # [T]
    cols: torch.Tensor  # [T]

    def unpack(self, packed: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """[R, C, ...] states of the packed rows -> [B, max length, ...], zero on padding."""
        out = packed.new_zeros(len(lengths), max(lengths), *packed.shape[2:])
        b = torch.repeat_interleave(torch.arange(len(lengths)), torch.as_tensor(lengths))
        i = torch.cat([torch.arange(n) for n in lengths])
        out[b, i] = packed[self.rows, self.cols]
        return out


def encode_questions_packed(model, question_ids: Sequence[Sequence[int]], pad_id: int = 0,
                            row_width: int = 64) -> QuestionEncoding:
    """`encode_questions` without padding work and without the per-layer caches (the late route does
    not need them): questions are packed first-fit-decreasing into rows of `row_width` tokens,
    block-diagonal attention, positions restarting per question. KgCLUE questions average 16 tokens
    against a batch maximum near 40, so padded rows are ~40% padding; packed rows are a few percent.
    Wider rows trade the padding saved for attention over the whole row (measured on KgCLUE dev,
    batches of 32, small model: 22 ms padded, 18 ms at width 64, 21 at 128, 25 at 256)."""
    lengths = [len(q) for q in question_ids]
    width = max(row_width, max(lengths))
    fill: list[int] = []
    place = [(0, 0)] * len(lengths)
    for b in sorted(range(len(lengths)), key=lambda b: -lengths[b]):
        row = next((r for r, used in enumerate(fill) if used + lengths[b] <= width), None)
        if row is None:
            row = len(fill)
            fill.append(0)
        place[b] = (row, fill[row])
        fill[row] += lengths[b]
    ids = torch.full((len(fill), max(fill)), pad_id, dtype=torch.long)
    docs = torch.full_like(ids, -1)
    positions = torch.zeros_like(ids)
    for b, q in enumerate(question_ids):
        row, start = place[b]
        ids[row, start : start + len(q)] = torch.as_tensor(q)
        docs[row, start : start + len(q)] = b
        positions[row, start : start + len(q)] = torch.arange(len(q))
    rows = torch.as_tensor([place[b][0] for b, n in enumerate(lengths) for _ in range(n)])
    cols = torch.as_tensor([place[b][1] + i for b, n in enumerate(lengths) for i in range(n)])
    base = model.wenzhi
    out = base.universal(ids, torch.zeros_like(ids), layout=layout_for(docs, positions, see_question=False))
    packed = PackedQuestions(out, rows, cols)
    # the padded view that the rest of the pipeline reads
    padded_ids = pad_rows(question_ids, pad_id)
    padded_docs = torch.where(torch.arange(padded_ids.shape[1]) < torch.as_tensor(lengths)[:, None], 0, -1)
    padded_pos = torch.arange(padded_ids.shape[1]).expand_as(padded_ids)
    hidden = packed.unpack(out.hidden_states, lengths)
    rotary = base.rotary(padded_pos, hidden.dtype)
    universal = UniversalOutput(hidden_states=hidden, layout=layout_for(padded_docs, padded_pos), rotary=rotary)
    return QuestionEncoding(universal, None, padded_ids, padded_docs, lengths, packed)


def encode_questions(model, question_ids: Sequence[Sequence[int]], pad_id: int = 0) -> QuestionEncoding:
    ids = pad_rows(question_ids, pad_id)
    lengths = [len(q) for q in question_ids]
    docs = torch.full_like(ids, -1)
    for i, n in enumerate(lengths):
        docs[i, :n] = 0
    positions = torch.arange(ids.shape[1]).expand_as(ids).clone()
    out, caches = model.wenzhi.encode_prefix(ids, torch.zeros_like(ids), layout_for(docs, positions))
    return QuestionEncoding(out, caches, ids, docs, lengths)


def extend_with_relations(model, enc: QuestionEncoding, segments: Sequence[Sequence[Sequence[int]]],
                          pad_id: int = 0) -> tuple[UniversalOutput, list[list[int]]]:
    """Universal states of the joined rows, running only the relation tokens through the layers."""
    rows, docs, pos, starts = [], [], [], []
    for b, segs in enumerate(segments):
        q_len, width = enc.lengths[b], enc.input_ids.shape[1]
        r_ids, r_docs, r_pos, r_starts = [], [], [], []
        for d, seg in enumerate(segs, 1):
            r_starts.append(width + len(r_ids))
            r_ids += seg
            r_docs += [d] * len(seg)
            r_pos += list(range(q_len, q_len + len(seg)))
        rows.append(r_ids); docs.append(r_docs); pos.append(r_pos); starts.append(r_starts)
    r_ids, r_docs, r_pos = pad_rows(rows, pad_id), pad_rows(docs, -1), pad_rows(pos, 0)
    key_docs = torch.cat([enc.document_ids, r_docs], dim=1)
    base = model.wenzhi
    x = base.extend(r_ids, r_pos, layout_for(r_docs, r_pos, key_docs).mask, enc.caches,
                    token_type_ids=torch.full_like(r_ids, RELATION_TYPE))
    hidden = torch.cat([enc.universal.hidden_states, x], dim=1)
    positions = torch.cat([enc.universal.layout.positions, r_pos], dim=1)
    full = layout_for(key_docs, positions)
    return UniversalOutput(hidden_states=hidden, layout=full, rotary=base.rotary(positions, hidden.dtype)), starts


SEGMENT_WIDTHS = (4, 6, 8, 12)  # `[CLS] relation [SEP]` lengths; most relation names are 2-6 characters


def segment_width(n: int, beyond: int) -> int:
    """The width bucket of an `n`-token segment (`beyond` for segments longer than every bucket)."""
    return next((w for w in SEGMENT_WIDTHS if w >= n), beyond)


def segment_rows(q_len: torch.Tensor, seg_len: torch.Tensor, q_width: int, width: int):
    """Mask [n, 1, 1, Lq + width] and positions [n, width] of rows holding one relation segment each,
    attending to its question's cached keys (first `q_len` of `q_width`) and to itself: every query
    (padding too, so no row of the mask is empty) sees the question and the segment; positions
    continue after the question, as in a `[CLS] q [SEP] r [SEP]` pair."""
    positions = q_len[:, None] + torch.arange(width)
    visible = torch.cat([torch.arange(q_width) < q_len[:, None], torch.arange(width) < seg_len[:, None]], 1)
    return visible[:, None, None, :], positions


def score_relations(model, enc: QuestionEncoding, segments: Sequence[Sequence[Sequence[int]]],
                    pad_id: int = 0, per_segment_above: int = 256) -> torch.Tensor:
    """SIM logit per relation segment (flattened in order), each segment as its own short row.

    Same scores as `extend_with_relations` + NLU + `sim_logits`, since a segment attends only to its
    question and to itself: each segment is a row whose keys are its question's cached keys/values
    (gathered by row) followed by its own. Rows are grouped into a few width buckets, so little
    relation work is padding (the joined rows of `extend_with_relations` pad every question to the
    longest one) and the tensors take a few recurring shapes; few buckets, because each is a pass
    through every layer. The NLU layers attend to the question's NLU keys/values, computed once
    per question. Up to `per_segment_above` segments in all (a batch of one or a few questions) the
    joined rows are cheaper: the gathers and per-bucket passes cost more than the padding they save
    (measured on KgCLUE dev, SIM step per question: batch of 1, 7.5 ms joined vs 10.5 per segment;
    batch of 32, 7.9 joined vs 5.4 per segment)."""
    lengths = [len(seg) for segs in segments for seg in segs]
    if not lengths:
        return torch.empty(0)
    if len(lengths) <= per_segment_above:
        universal, starts = extend_with_relations(model, enc, segments, pad_id)
        return sim_logits(model, model.wenzhi.nlu(universal), starts)
    base = model.wenzhi
    owner_all = [b for b, segs in enumerate(segments) for _ in segs]
    flat = [seg for segs in segments for seg in segs]
    q_len_all = torch.as_tensor(enc.lengths, dtype=torch.long)
    nlu_caches = base.nlu_prefix_cache(enc.universal)
    out = torch.empty(len(flat))
    buckets: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        buckets.setdefault(segment_width(n, max(lengths)), []).append(i)
    cls_only = torch.zeros(1, dtype=torch.long)
    for rows in buckets.values():
        owner = torch.as_tensor([owner_all[i] for i in rows], dtype=torch.long)
        ids = pad_rows([flat[i] for i in rows], pad_id)  # [n, width]
        mask, positions = segment_rows(q_len_all[owner], torch.as_tensor([lengths[i] for i in rows]),
                                       enc.input_ids.shape[1], ids.shape[1])
        x = base.extend(ids, positions, mask, enc.caches, torch.full_like(ids, RELATION_TYPE), rows=owner)
        x = base.nlu_extend(x, positions, mask, nlu_caches, rows=owner, last_queries=cls_only)
        out[torch.as_tensor(rows)] = model.pair_logits(x[:, 0]).squeeze(-1).float()
    return out

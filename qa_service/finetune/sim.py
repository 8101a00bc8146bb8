"""The SIM head: each question with its gold relation among negatives drawn as evaluation draws
candidates (data.NegativeSampler), softmax cross-entropy over them (or BCE per pair)."""
from __future__ import annotations

import random

from wenzhi.qa_service.finetune.common import build_model
from wenzhi.qa_service.finetune.config import FinetuneConfig
from wenzhi.qa_service.heads import pad_rows


def setup(cfg: FinetuneConfig, tokenizer, examples, store, report: dict):
    """(model, number of training items, step function) of the SIM head."""
    import torch

    from wenzhi.qa_service import data
    from wenzhi.qa_service.packing import relation_segments

    groups = data.sim_groups(examples, store, negatives=cfg.negatives, seed=cfg.seed)
    rng = random.Random(cfg.seed)
    for _, rels in groups:  # the gold relation must not always be the first segment
        rng.shuffle(rels)
    gold_at = [rels.index(ex.relation) for ex, (_, rels) in zip(examples, groups)]
    report["candidates_per_question"] = round(sum(len(rels) for _, rels in groups) / max(1, len(groups)), 1)
    pad = tokenizer.pad_token_id
    if cfg.interaction == "match":
        from wenzhi.model.relation_matching import WenzhiForRelationMatching

        enc = tokenizer([g[0] for g in groups], max_length=48, truncation=True, return_offsets_mapping=True)
        # the entity mention is left out of the match, as the pipeline leaves out what NER found
        spans = [data.find_mention(ex.question, data.mention_names(ex.head, store)) for ex in examples]
        keep = [[not (span and s < span[1] and e > span[0]) for s, e in offsets]
                for span, offsets in zip(spans, enc["offset_mapping"])]
        q_ids = enc["input_ids"]
        model = build_model(cfg, tokenizer, WenzhiForRelationMatching)

        def step(idx):
            names = list(dict.fromkeys(r for i in idx for r in groups[i][1]))
            slot = {r: j for j, r in enumerate(names)}
            rel_ids = pad_rows(relation_segments(tokenizer, names), pad)
            candidates = pad_rows([[slot[r] for r in groups[i][1]] for i in idx], -1)
            ids = pad_rows([q_ids[i] for i in idx], pad)
            token_mask = pad_rows([keep[i] for i in idx], 0).bool()
            return model(ids, relation_input_ids=rel_ids, candidates=candidates, token_mask=token_mask,
                         labels=torch.as_tensor([gold_at[i] for i in idx])).loss

        return model, len(groups), step

    from wenzhi.model.modeling import WenzhiForSequencePairClassification

    from wenzhi.qa_service.packing import packed_batch, sim_logits, universal_packed

    q_ids = tokenizer([g[0] for g in groups], max_length=48, truncation=True)["input_ids"]
    segs = [relation_segments(tokenizer, g[1]) for g in groups]
    model = build_model(cfg, tokenizer, WenzhiForSequencePairClassification, num_labels=1,
                        pair_interaction=cfg.interaction)

    def step(idx):
        batch = packed_batch([q_ids[i] for i in idx], [segs[i] for i in idx], pad)
        hidden = model.wenzhi.nlu(universal_packed(model, batch))
        logits = sim_logits(model, hidden, batch.segment_starts).float()
        sizes = [len(segs[i]) for i in idx]
        owner = torch.repeat_interleave(torch.arange(len(idx)), torch.as_tensor(sizes))
        col = torch.cat([torch.arange(n) for n in sizes])
        gold = torch.as_tensor([gold_at[i] for i in idx])
        if cfg.sim_loss == "pointwise":
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, (col == gold[owner]).float())
        # listwise: softmax cross-entropy of the gold among its own question's candidates
        per_q = logits.new_full((len(idx), max(sizes)), float("-inf"))
        per_q[owner, col] = logits
        return torch.nn.functional.cross_entropy(per_q, gold)

    return model, len(groups), step

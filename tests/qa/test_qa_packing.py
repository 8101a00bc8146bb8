"""One universal pass per question: the cached route gives the scores of the one-pass packed rows,
and the question's states do not depend on the relations appended to it."""
import pytest
import torch

from wenzhi.qa_service.packing import (encode_questions, extend_with_relations, packed_batch, relation_segments,
                                score_relations, sim_logits, universal_packed)

QUESTIONS = ["刘晓华主要讲什么课啊？", "我很好奇龙编站的坐标是什么啊？"]
RELATIONS = [["主讲课程", "教学职称", "国籍", "出生地"], ["坐标", "所属线路", "站台", "开通时间", "出口", "高", "中文名称别名"]]


@pytest.fixture(scope="module")
def models():
    from wenzhi.model.modeling import WenzhiConfig, WenzhiForSequencePairClassification, WenzhiForTokenClassification
    from wenzhi.model.tokenizer import load_tokenizer

    tok = load_tokenizer(None)
    torch.manual_seed(0)
    cfg = WenzhiConfig(vocab_size=len(tok), hidden_size=32, num_universal_layers=2, num_nlu_layers=1,
                       num_nlg_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=1)
    sim = WenzhiForSequencePairClassification(cfg).eval()
    for layer in (sim.pooler, sim.classifier):  # spread the scores: the default init makes them near-constant
        torch.nn.init.normal_(layer.weight, std=1.0)
    ner_model = WenzhiForTokenClassification(WenzhiConfig(**{k: v for k, v in cfg.to_dict().items() if k not in ("id2label", "label2id")}, num_labels=3)).eval()
    ner_model.wenzhi.load_state_dict(sim.wenzhi.state_dict())  # one universal module, as after frozen fine-tuning
    return tok, sim, ner_model


def test_cached_route_equals_one_pass(models):
    tok, sim, _ = models
    q_ids = tok(QUESTIONS)["input_ids"]
    segs = [relation_segments(tok, r) for r in RELATIONS]
    with torch.no_grad():
        batch = packed_batch(q_ids, segs)
        one_pass = sim_logits(sim, sim.wenzhi.nlu(universal_packed(sim, batch)), batch.segment_starts)
        enc = encode_questions(sim, q_ids)
        universal, starts = extend_with_relations(sim, enc, segs)
        cached = sim_logits(sim, sim.wenzhi.nlu(universal), starts)
        joined = score_relations(sim, enc, segs)  # few segments: the joined rows
        per_segment = score_relations(sim, enc, segs, per_segment_above=0)  # widths 4, 6, 8; padding in 4 and 6
        # a question with no candidate relation between the others leaves the rest unchanged
        with_empty = score_relations(sim, encode_questions(sim, [q_ids[0], tok("谁？")["input_ids"], q_ids[1]]),
                                     [segs[0], [], segs[1]], per_segment_above=0)
    assert one_pass.shape == (sum(len(r) for r in RELATIONS),)
    assert torch.allclose(one_pass, cached, atol=1e-5)
    assert torch.allclose(one_pass, per_segment, atol=1e-5)
    assert torch.allclose(one_pass, with_empty, atol=1e-5)
    assert torch.allclose(one_pass, joined, atol=1e-5)
    # and the scores differ between relations (the test would pass trivially on a constant)
    assert one_pass.std() > 1e-4


def test_question_states_ignore_the_relations(models):
    tok, sim, ner = models
    q_ids = tok(QUESTIONS)["input_ids"]
    with torch.no_grad():
        enc = encode_questions(sim, q_ids)
        shared = ner.classifier(ner.wenzhi.nlu(enc.universal))
        for i, ids in enumerate(q_ids):
            alone = ner(torch.tensor([ids])).logits[0]
            assert torch.allclose(shared[i, : len(ids)], alone, atol=1e-5)
        batch = packed_batch(q_ids, [relation_segments(tok, r) for r in RELATIONS])
        packed = universal_packed(sim, batch).hidden_states
        for i, ids in enumerate(q_ids):
            assert torch.allclose(packed[i, : len(ids)], enc.universal.hidden_states[i, : len(ids)], atol=1e-5)


@pytest.fixture(scope="module")
def late_sim(models):
    from wenzhi.model.modeling import WenzhiForSequencePairClassification

    _, sim, _ = models
    late = WenzhiForSequencePairClassification(sim.config.__class__(**{**sim.config.to_dict(), "pair_interaction": "late"})).eval()
    late.load_state_dict(sim.state_dict())
    return late


def test_late_route_equals_packed_rows(models, late_sim):
    """A late SIM head: cached relation states + NLU (last layer at [CLS] only) give the packed scores."""
    from wenzhi.qa_service.relation_states import RelationStates, score_relations_late

    tok, sim, _ = models
    q_ids = tok(QUESTIONS)["input_ids"]
    segs = [relation_segments(tok, r) for r in RELATIONS]
    states = RelationStates(late_sim, tok)
    with torch.no_grad():
        batch = packed_batch(q_ids, segs)
        packed = sim_logits(late_sim, late_sim.wenzhi.nlu(universal_packed(late_sim, batch)), batch.segment_starts)
        full = sim_logits(sim, sim.wenzhi.nlu(universal_packed(sim, batch)), batch.segment_starts)
        enc = encode_questions(late_sim, q_ids)
        late = score_relations_late(late_sim, enc, RELATIONS, states)
        again = score_relations_late(late_sim, enc, RELATIONS, states)  # from the cache this time
        with_empty = score_relations_late(late_sim, encode_questions(late_sim, [q_ids[0], tok("谁？")["input_ids"], q_ids[1]]),
                                          [RELATIONS[0], [], RELATIONS[1]], states)
        # the HF-style forward of `[CLS] q [SEP] r [SEP]` pairs (segments by token type): the question's
        # universal states must not depend on the relation in a late model
        pairs = tok([QUESTIONS[1]] * 2, RELATIONS[1][:2], return_tensors="pt", padding=True)
        seen = []
        hook = late_sim.wenzhi.universal_layers[-1].register_forward_hook(lambda m, a, o: seen.append(o))
        logits = late_sim(pairs["input_ids"], token_type_ids=pairs["token_type_ids"],
                          attention_mask=pairs["attention_mask"]).logits[:, 0]
        hook.remove()
        n_q = len(q_ids[1])
    assert len(states) == len({r for rels in RELATIONS for r in rels})
    assert torch.allclose(packed, late, atol=1e-5)
    assert torch.equal(late, again)
    assert torch.allclose(packed, with_empty, atol=1e-5)
    assert torch.allclose(seen[0][0, :n_q], seen[0][1, :n_q], atol=1e-6)
    assert not torch.allclose(logits[0], logits[1], atol=1e-4)
    assert not torch.allclose(packed, full, atol=1e-3)  # the late layout is a different function
    assert packed.std() > 1e-4


def test_query_subset_block_equals_full_block(models):
    """Block(queries=...) computes the chosen tokens exactly as the full block does."""
    _, sim, _ = models
    block = sim.wenzhi.nlu_layers[0]
    from wenzhi.model.modeling import rotary_tables

    x = torch.randn(3, 7, 32)
    cos, sin = rotary_tables(torch.arange(7).expand(3, 7), 16, 10000.0, x.dtype)
    mask = torch.rand(3, 1, 7, 7) > 0.3
    mask[..., 0] = True
    with torch.no_grad():
        full = block(x, cos, sin, mask)
        some = block(x, cos, sin, mask, queries=torch.tensor([0, 4]))
    assert some.shape == (3, 2, 32)
    assert torch.allclose(full[:, [0, 4]], some, atol=1e-6)


def test_packed_questions_equal_padded(models, late_sim):
    """Questions packed end to end (no padding work) give the padded route's states, NER logits and
    late relation scores."""
    from wenzhi.qa_service.packing import encode_questions_packed
    from wenzhi.qa_service.relation_states import RelationStates, score_relations_late

    tok, _, ner = models
    questions = QUESTIONS + ["谁？", "中华人民共和国的首都在哪个城市，它的面积有多大？"]
    q_ids = tok(questions)["input_ids"]
    rels = RELATIONS + [["国籍"], ["首都", "面积"]]
    with torch.no_grad():
        padded = encode_questions(late_sim, q_ids)
        packed = encode_questions_packed(late_sim, q_ids, row_width=40)  # several rows, first fit
        assert packed.packed.universal.hidden_states.shape[0] > 1
        for i, ids in enumerate(q_ids):
            assert torch.allclose(padded.universal.hidden_states[i, : len(ids)],
                                  packed.universal.hidden_states[i, : len(ids)], atol=1e-5)
        ner_padded = ner.from_universal(padded.universal).logits
        ner_packed = packed.packed.unpack(ner.from_universal(packed.packed.universal).logits, packed.lengths)
        for i, ids in enumerate(q_ids):
            assert torch.allclose(ner_padded[i, : len(ids)], ner_packed[i, : len(ids)], atol=1e-5)
        states = RelationStates(late_sim, tok)
        a = score_relations_late(late_sim, padded, rels, states)
        b = score_relations_late(late_sim, packed, rels, states)
    assert torch.allclose(a, b, atol=1e-5)


def test_relation_matching_serving_route_equals_its_forward(models):
    """The relation-matching head: the table of relation states (computed once per name) scored
    against the shared question pass, padded or packed, gives the logits of the head's own forward
    (its training route); a question's masked mention changes only what it should."""
    from wenzhi.model.relation_matching import WenzhiForRelationMatching

    from wenzhi.qa_service.heads import pad_rows
    from wenzhi.qa_service.packing import encode_questions_packed
    from wenzhi.qa_service.pipeline import outside_spans
    from wenzhi.qa_service.relation_states import relation_scorer

    tok, sim, _ = models
    torch.manual_seed(1)
    match = WenzhiForRelationMatching(sim.config.__class__(**{**sim.config.to_dict(), "num_labels": 1})).eval()
    questions = QUESTIONS + ["谁？", "中华人民共和国的首都在哪个城市，它的面积有多大？"]
    rels = RELATIONS + [["国籍"], ["首都", "面积", "主讲课程"]]
    enc_tok = tok(questions, return_offsets_mapping=True)
    q_ids = enc_tok["input_ids"]
    mentions = outside_spans(enc_tok["offset_mapping"], [[(0, 3)], [(4, 7)], [], [(0, 7)]])
    names = list(dict.fromkeys(r for rs in rels for r in rs))
    with torch.no_grad():
        table = relation_scorer(match, tok)
        padded = table.score(encode_questions(match, q_ids), rels, mentions)
        packed = table.score(encode_questions_packed(match, q_ids, row_width=40), rels, mentions)
        candidates = pad_rows([[names.index(r) for r in rs] for rs in rels], -1)
        forward = match(pad_rows(q_ids, tok.pad_token_id), relation_input_ids=pad_rows(
            relation_segments(tok, names), tok.pad_token_id), candidates=candidates, token_mask=mentions).logits
        unmasked = table.score(encode_questions(match, q_ids), rels)
    assert len(table) == len(names)
    assert torch.allclose(padded, forward[candidates >= 0], atol=1e-5)
    assert torch.allclose(packed, padded, atol=1e-5)
    assert padded.std() > 1e-3
    first, third = slice(0, len(rels[0])), len(rels[0]) + len(rels[1])  # question 2 ("谁？") has no mention
    assert not torch.allclose(unmasked[first], padded[first], atol=1e-4)  # question 0's mention was left out
    assert torch.allclose(unmasked[third], padded[third], atol=1e-6)

"""One universal pass per question: the cached route gives the scores of the one-pass packed rows,
and the question's states do not depend on the relations appended to it."""
import pytest
import torch

from qa_service.packing import (encode_questions, extend_with_relations, packed_batch, relation_segments,
                                score_relations, sim_logits, universal_packed)

QUESTIONS = ["刘晓华主要讲什么课啊？", "我很好奇龙编站的坐标是什么啊？"]
RELATIONS = [["主讲课程", "教学职称", "国籍", "出生地"], ["坐标", "所属线路", "站台", "开通时间", "出口", "高", "中文名称别名"]]


@pytest.fixture(scope="module")
def models():
    from model.modeling import WenzhiConfig, WenzhiForSequencePairClassification, WenzhiForTokenClassification
    from model.tokenizer import load_tokenizer

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

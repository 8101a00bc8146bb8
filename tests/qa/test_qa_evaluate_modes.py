"""`wenzhi evaluate --mode` and `--distractor-relations` on a hand-made KB whose expected scores are
worked out by hand: with the lexical rule as the only fusion weight the choice of relation is known
in advance, so the figures test the evaluation, not the model."""
import json

import pytest

# 国籍 is the most frequent relation (4 triples), 性别 the second (2): the distractors for K = 2
KB = """刘晓华（广东工业大学教授）\t主讲课程\t《固体物理》
刘晓华（广东工业大学教授）\t国籍\t中国
龙编站\t坐标\t21°2′22.9″N
王小明\t国籍\t中国
王小明\t性别\t男
李华成\t国籍\t中国
李华成\t性别\t女
赵六一\t国籍\t法国
"""
QUESTIONS = [  # (question, gold answer)
    ("刘晓华主要讲什么课啊？", "刘晓华（广东工业大学教授） ||| 主讲课程 ||| 《固体物理》"),
    ("龙编站的坐标是什么？", "龙编站 ||| 坐标 ||| 21°2′22.9″N"),
    ("王小明的性别是什么？", "王小明 ||| 性别 ||| 男"),
    # names a relation 龙编站 lacks: without distractors its one relation is the answer; with them the
    # lexical rule picks the distractor 国籍, whose tail is unknown, so the question scores 0
    ("龙编站的国籍是哪里？", "龙编站 ||| 坐标 ||| 21°2′22.9″N"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, model_dir):
    from wenzhi.kg import TripleStore

    root = tmp_path_factory.mktemp("tiny_kb")
    (root / "knowledge.txt").write_text(KB, encoding="utf-8")
    TripleStore.import_files([root / "knowledge.txt"], root / "kb.sqlite")
    questions = root / "questions.json"
    questions.write_text("".join(json.dumps({"id": i, "question": q, "answer": a}, ensure_ascii=False) + "\n"
                                 for i, (q, a) in enumerate(QUESTIONS)), encoding="utf-8")
    lexical_only = root / "model"  # the session's heads, with fusion weights that leave only the lexical rule
    lexical_only.mkdir()
    for head in ("sim", "ner", "gen"):
        (lexical_only / head).symlink_to(model_dir / head)
    (lexical_only / "vocab.txt").symlink_to(model_dir / "vocab.txt")
    (lexical_only / "pipeline.json").write_text(json.dumps(
        {"w_link": 0.0, "w_ner": 0.0, "w_sim": 0.0, "w_gen": 0.0, "w_len": 0.0, "w_lex": 1.0}))
    return root / "kb.sqlite", questions, lexical_only


def _evaluate(tiny, **kwargs):
    from wenzhi.qa_service.evaluate import evaluate

    kb, questions, model = tiny
    return evaluate(questions, kb, model, threads=1, progress=False, **kwargs)


def test_distractor_relations_make_the_relation_decide(tiny):
    plain = _evaluate(tiny, mode="pipeline")
    assert plain["score"] == 100.0  # every question's entity holds one matching or one only relation
    distracted = _evaluate(tiny, mode="pipeline", distractor_relations=2)
    # question 4 now picks 龙编站 ||| 国籍 ||| (no tail): EM_O and F1_O 0 there, 100 elsewhere
    assert distracted["score"] == 75.0 and distracted["em_o"] == 75.0 and distracted["f1_o"] == 75.0
    assert distracted["breakdown"]["relation_right"] == 0.75
    assert distracted["config"]["distractor_relations"] == 2 and distracted["config"]["mode"] == "pipeline"


def test_the_pipeline_offers_distractors_with_unknown_tails(tiny):
    from wenzhi.qa_service.pipeline import PipelineConfig, QAPipeline

    kb, _, model = tiny
    pipe = QAPipeline(model, kb, PipelineConfig.load(model, mode="pipeline", distractor_relations=2, threads=1))
    try:
        [lacking, holding] = pipe.answer_batch(["龙编站的国籍是哪里？", "王小明的性别是什么？"], top_k=10)
    finally:
        pipe.close()
    assert lacking.triple == ("龙编站", "国籍", "")
    assert sorted((c.relation, c.tail) for c in lacking.candidates) == [("国籍", ""), ("坐标", "21°2′22.9″N"),
                                                                       ("性别", "")]
    assert sorted((c.relation, c.tail) for c in holding.candidates) == [("国籍", "中国"), ("性别", "男")]


def test_each_mode_scores_its_own_path(tiny):
    from wenzhi.qa_service.metric import kgclue_scores

    from wenzhi.qa_service.pipeline import PipelineConfig, QAPipeline

    pipeline_only = _evaluate(tiny, mode="pipeline")
    assert pipeline_only["config"]["use_gen"] is False  # the GEN head is not even loaded
    gen_only = _evaluate(tiny, mode="gen", distractor_relations=2)
    assert gen_only["config"]["use_gen"] is True
    # GEN alone: the answer is the top trie-constrained (head, relation), whatever the other evidence says
    kb, questions, model = tiny
    pipe = QAPipeline(model, kb, PipelineConfig.load(model, mode="gen", distractor_relations=2, threads=1))
    try:
        answers = pipe.answer_batch([q for q, _ in QUESTIONS], top_k=50)
        hits = pipe._gen([pipe.tokenizer(q)["input_ids"] for q, _ in QUESTIONS])
    finally:
        pipe.close()
    for a, h in zip(answers, hits):
        assert all(c.gen > 0 for c in a.candidates)
        if a.triple is not None:
            best = max(h.values())
            assert h[(a.entity_id, a.triple[1])] == best
    assert gen_only["score"] == kgclue_scores([a.answer for a in answers], [g for _, g in QUESTIONS])["score"]


def test_the_lexical_rule_by_hand():
    from wenzhi.qa_service.lexical import lexical_scores, strip_mention

    # "主讲课程" shares runs of one character with "主要讲什么课啊？" (1/4), "国籍" none; the mention is
    # removed first, so "晓华" cannot match a relation named after the person
    assert lexical_scores("刘晓华主要讲什么课啊？", ["主讲课程", "国籍", "晓华"], "刘晓华") == [0.251, 0.0, 0.0]
    assert lexical_scores("龙编站的坐标是什么？", ["坐标", "地理坐标"], (0, 3)) == [1.002, 0.502]
    assert strip_mention("龙编站的坐标", (0, 3)) == " 的坐标" and strip_mention("abc", "x") == "abc"

"""The SIM head's learned relation prior (qa_service/relation_prior.py): its counts on a hand-made KB,
worked out by hand, and what it adds to the session's SIM head on held-out KgCLUE dev questions."""
import math

import pytest

from wenzhi.kg.questions import QAExample
from wenzhi.qa_service.relation_prior import RelationPrior

# 国籍 (3 triples) and 性别 (2) are the KB's two most frequent relations
KB = """王小明\t国籍\t中国
王小明\t性别\t男
李华成\t国籍\t中国
李华成\t性别\t女
李华成\t职业\t教师
赵六一\t国籍\t法国
龙编站\t坐标\t21°2′22.9″N
"""


def test_prior_counts_by_hand(tmp_path):
    from wenzhi.kg import TripleStore

    (tmp_path / "knowledge.txt").write_text(KB, encoding="utf-8")
    TripleStore.import_files([tmp_path / "knowledge.txt"], tmp_path / "kb.sqlite")
    store = TripleStore(tmp_path / "kb.sqlite")
    train = [QAExample("1", "李华成是做什么的？", "李华成", "职业", "教师"),
             QAExample("2", "王小明是男是女？", "王小明", "性别", "男"),
             QAExample("3", "龙编站在哪里？", "龙编站", "坐标", "21°2′22.9″N")]
    prior = RelationPrior.fit(train, store, frequent=2)
    store.close()
    # candidates: {国籍, 性别, 职业}, {国籍, 性别}, {国籍, 性别, 坐标}
    assert prior.offered == {"国籍": 3, "性别": 3, "职业": 1, "坐标": 1}
    assert prior.asked == {"职业": 1, "性别": 1, "坐标": 1}
    assert prior.mean_candidates == pytest.approx(8 / 3)
    p0 = 3 / 8
    got = dict(zip(["国籍", "性别", "职业", "主演"], prior.log_prior(["国籍", "性别", "职业", "主演"])))
    assert got["国籍"] == pytest.approx(math.log(10 * p0 / 13))  # offered 3 times, never asked
    assert got["性别"] == pytest.approx(math.log((1 + 10 * p0) / 13))
    assert got["职业"] == pytest.approx(math.log((1 + 10 * p0) / 11))  # asked each time it was offered
    assert got["主演"] == pytest.approx(math.log(p0))  # never seen: the blind rate
    assert got["职业"] > got["主演"] > got["性别"] > got["国籍"]

    prior.weight = 0.5
    prior.save(tmp_path)
    again = RelationPrior.load(tmp_path)
    assert again == prior and again.bias(["国籍"]) == [pytest.approx(0.5 * got["国籍"])]
    assert RelationPrior.load(tmp_path / "elsewhere") is None
    for broken in ('{"asked": []}', '{"questions": 1, "mean_candidates": 2, "alpha": 10, "weight": 1, '
                   '"asked": {"国籍": 2}, "offered": {"国籍": 1}}'):
        (tmp_path / "relation_prior.json").write_text(broken, encoding="utf-8")
        with pytest.raises(ValueError, match="not a relation prior"):
            RelationPrior.load(tmp_path)


def test_prior_helps_the_sim_head_on_held_out_questions(model_dir, kb_db, kgclue_dev):
    """The session's SIM head (trained on 300 KgCLUE train questions, its prior fitted on them) against
    the same head without its prior, on 300 dev questions among 30+ candidates each: 293 vs 286 right
    when written."""
    from wenzhi.qa_service.data import find_mention, frequent_relations, homonym_relations, mention_names
    from wenzhi.qa_service.pipeline import QAPipeline

    prior = RelationPrior.load(model_dir / "sim")
    assert prior is not None and prior.questions == 300  # `wenzhi finetune sim` fitted it
    pipe = QAPipeline(model_dir, kb_db)
    top = frequent_relations(pipe.store, 30)
    questions, candidates, mentions = [], [], []
    for ex in kgclue_dev[:300]:
        own, homonyms = homonym_relations(pipe.store, ex.head)
        questions.append(ex.question)
        candidates.append(list(dict.fromkeys([*top, *own, *homonyms, ex.relation])))
        mentions.append(find_mention(ex.question, mention_names(ex.head, pipe.store)))
    scores = []
    for i in range(0, len(questions), 50):
        scores += pipe.relation_scores(questions[i : i + 50], candidates[i : i + 50], mentions[i : i + 50])
    pipe.close()
    right_with = right_without = 0
    for ex, rels, with_prior in zip(kgclue_dev, candidates, scores):
        without = [s - b for s, b in zip(with_prior, prior.bias(rels))]  # the bias is additive, exactly
        right_with += rels[max(range(len(rels)), key=with_prior.__getitem__)] == ex.relation
        right_without += rels[max(range(len(rels)), key=without.__getitem__)] == ex.relation
    assert sum(map(len, candidates)) / len(candidates) >= 30
    assert right_with > right_without + 3, (right_with, right_without)

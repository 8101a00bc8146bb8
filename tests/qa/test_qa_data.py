"""Fine-tuning data derived from real KgCLUE questions and the KB slice."""
from wenzhi.qa_service.data import (holdout_split, homonym_relations, ner_examples, ner_features, read_qa,
                                    sim_groups)


def _examples(kgclue_dev, n):
    return kgclue_dev[:n]  # the KBQA reader (kg/questions.py) already gives QAExample


def test_ner_spans_cover_nearly_all_questions_and_match_the_head(kgclue_dev, kb_store):
    examples = _examples(kgclue_dev, 300)
    items, coverage = ner_examples(examples, kb_store)
    assert coverage["n"] == 300 and coverage["coverage"] >= 0.97
    for ex, (question, span) in zip(examples, items):
        if span is None:
            continue
        text = question[span[0]:span[1]]
        names = {ex.head, ex.head.split("（")[0], *kb_store.aliases(kb_store.entity_by_name(ex.head).id)} \
            if kb_store.entity_by_name(ex.head) else {ex.head, ex.head.split("（")[0]}
        assert text.lower() in {n.lower() for n in names}


def test_ner_labels_are_bio_on_the_mention_tokens(kgclue_dev, kb_store):
    from wenzhi.model.tokenizer import load_tokenizer

    tok = load_tokenizer(None)
    ex = [e for e in _examples(kgclue_dev, 50) if e.question.startswith("刘晓华主要讲什么课")]
    assert ex, "KgCLUE dev question 0 changed"
    items, _ = ner_examples(ex, kb_store)
    feats = ner_features(tok, items)
    tokens = tok.convert_ids_to_tokens(feats["input_ids"][0])
    labels = feats["labels"][0]
    assert tokens[:4] == ["[CLS]", "刘", "晓", "华"]
    assert labels[:5] == [-100, 1, 2, 2, 0] and labels[-1] == -100


def test_sim_negatives_are_drawn_as_evaluation_draws_candidates(kgclue_dev, kb_store):
    examples = _examples(kgclue_dev, 300)
    groups = sim_groups(examples, kb_store, negatives=15, seed=0)
    frequent = {r for r, _ in kb_store.relation_counts()[:30]}
    kinds = {"own": 0, "sharing": 0}
    for ex, (question, rels) in zip(examples, groups):
        assert question == ex.question and rels[0] == ex.relation
        negs = rels[1:]
        assert len(negs) == len(set(negs)) and ex.relation not in negs
        assert frequent - {ex.relation} <= set(negs)  # every frequent relation, as evaluation offers them all
        drawn = negs[: len(negs) - len(frequent - {ex.relation} - set(negs[:15]))]
        assert len(drawn) == 15
        own, homonyms = homonym_relations(kb_store, ex.head)
        others = [r for r in own + homonyms if r != ex.relation]
        assert set(others[:7]) <= set(drawn) if len(others) <= 7 else len(set(drawn) & set(others)) == 7
        kinds["own"] += bool(set(drawn) & set(others))
        text = ex.question.replace(ex.head.split("（")[0], " ")
        kinds["sharing"] += any(set(r) & set(text) for r in drawn if r not in others and r not in frequent)
    # both kinds are drawn on this slice: the entity's own relations, relations sharing characters
    assert kinds["own"] >= 5 and kinds["sharing"] >= 250, kinds


def test_holdout_split_is_disjoint_and_repeatable(data_dir):
    rows = read_qa(data_dir / "nlpcc2016" / "train.json", limit=500)
    train, hold = holdout_split(rows, 0.2, seed=0)
    train2, hold2 = holdout_split(rows, 0.2, seed=0)
    assert len(hold) == 100 and len(train) == 400
    assert {r.id for r in hold} == {r.id for r in hold2}
    assert not {r.id for r in hold} & {r.id for r in train}

"""Fine-tuning data derived from real KgCLUE questions and the KB slice."""
from wenzhi.qa_service.data import (holdout_split, homonym_relations, ner_examples, ner_features, read_qa,
                             sim_pairs)


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


def test_sim_negatives_come_from_the_entity_then_its_homonyms(kgclue_dev, kb_store):
    examples = _examples(kgclue_dev, 300)
    pairs = sim_pairs(examples, kb_store, negatives=5, seed=0)
    assert len(pairs) == 6 * len(examples)
    checked_own = checked_homonym = 0
    for i, ex in enumerate(examples):
        group = pairs[6 * i : 6 * i + 6]
        assert group[0] == (ex.question, ex.relation, 1)
        negs = [rel for _, rel, label in group[1:]]
        assert all(label == 0 for _, _, label in group[1:]) and ex.relation not in negs
        own, homonyms = homonym_relations(kb_store, ex.head)
        own = [r for r in own if r != ex.relation]
        n_own = min(len(own), 5)
        assert set(negs[:n_own]) <= set(own)  # the entity's own relations first
        checked_own += n_own > 0
        rest = [r for r in homonyms if r != ex.relation and r not in own]
        n_hom = min(len(rest), 5 - n_own)
        assert set(negs[n_own : n_own + n_hom]) <= set(rest)  # then its homonyms'
        checked_homonym += n_hom > 0
    assert checked_own >= 5 and checked_homonym >= 5  # both kinds are exercised on this slice


def test_holdout_split_is_disjoint_and_repeatable(data_dir):
    rows = read_qa(data_dir / "nlpcc2016" / "train.json", limit=500)
    train, hold = holdout_split(rows, 0.2, seed=0)
    train2, hold2 = holdout_split(rows, 0.2, seed=0)
    assert len(hold) == 100 and len(train) == 400
    assert {r.id for r in hold} == {r.id for r in hold2}
    assert not {r.id for r in hold} & {r.id for r in train}

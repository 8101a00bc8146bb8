import numpy as np

from wenzhi.model.corpora import TripleSentence, kdconv_pairs, read_agrikg
from wenzhi.model.masking import IGNORE_INDEX
from wenzhi.model.uktp import MODES, build_uktp_example, heldout_triple, linked_pairs


def _pairs(data_dir, n=200):
    out = []
    for p in read_agrikg(data_dir / "corpus" / "agrikg_distant_supervision.tsv"):
        out.append(p)
        if len(out) == n:
            break
    return out + list(kdconv_pairs(data_dir / "kdconv" / "travel" / "dev.json"))[:100]


def _decode(tokenizer, ids):
    return "".join(t.removeprefix("##") for t in tokenizer.convert_ids_to_tokens([int(i) for i in ids]))


def test_uktp_examples_well_formed(tokenizer, data_dir):
    rng = np.random.default_rng(0)
    seen_modes = set()
    for pair in _pairs(data_dir):
        for mode in MODES:
            ex = build_uktp_example(pair, tokenizer, rng, 64, mode=mode)
            assert ex is not None
            ids = np.array(ex.input_ids)
            n = len(ids)
            assert n <= 64 and len(ex.labels) == len(ex.token_type_ids) == n
            seps = np.nonzero(np.where(ex.labels != IGNORE_INDEX, ex.labels, ids) == tokenizer.sep_token_id)[0]
            assert ids[0] == tokenizer.cls_token_id and seps[-1] == n - 1
            first_sep = seps[0]
            # segments: [CLS] triple [SEP] -> 1, sentence [SEP] -> 0
            assert (ex.token_type_ids[: first_sep + 1] == 1).all() and (ex.token_type_ids[first_sep + 1:] == 0).all()
            labelled = ex.labels != IGNORE_INDEX
            assert labelled.any()
            side = set(ex.token_type_ids[labelled].tolist())
            assert len(side) == 1  # only one side is masked...
            answer = _decode(tokenizer, ex.labels[labelled])
            if ex.mode == "relation":
                assert side == {1} and answer == _decode(tokenizer, tokenizer(pair.relation, add_special_tokens=False)["input_ids"])
            elif ex.mode == "triple_entity":  # ...and the other side states the answer
                assert side == {1} and answer in _decode(tokenizer, ids[first_sep + 1:])
            else:
                assert side == {0}
                for s, e in ex.spans:  # each masked mention is the head or tail the triple states
                    assert _decode(tokenizer, ex.labels[s:e]) in _decode(tokenizer, ids[:first_sep])
                assert ex.mode == "sentence_entity"
            seen_modes.add(ex.mode)
    assert seen_modes == set(MODES)


def test_long_sentence_cut_around_the_mentions(tokenizer):
    sentence = "甲" * 300 + "水稻属于禾本科植物" + "乙" * 300
    pair = TripleSentence("水稻", "科", "禾本科", sentence, "test")
    ex = build_uktp_example(pair, tokenizer, np.random.default_rng(0), 40, mode="sentence_entity")
    assert len(ex.input_ids) <= 40
    text = _decode(tokenizer, np.where(ex.labels != IGNORE_INDEX, ex.labels, ex.input_ids))
    assert "禾本科" in text.split("[SEP]")[1]


def test_mix_ratio_configurable(tokenizer, data_dir):
    from wenzhi.model.uktp import UKTPConfig

    rng = np.random.default_rng(1)
    cfg = UKTPConfig(relation=0.0, triple_entity=1.0, sentence_entity=0.0)
    modes = [build_uktp_example(p, tokenizer, rng, 96, cfg).mode for p in _pairs(data_dir, 100)]
    assert set(modes) == {"triple_entity"}


def test_pairs_found_by_linking(kb_store, linker):
    found = 0
    for i, t in enumerate(kb_store.iter_triples()):
        if i > 3000 or found >= 5:
            break
        entity = kb_store.entity(t.head_id)
        if not 2 <= len(t.tail) <= 10 or len(entity.base) < 2 or t.relation in ("Information",):
            continue
        sentence = f"{entity.base}的{t.relation}是{t.tail}。"
        pairs = list(linked_pairs(sentence, linker, kb_store))
        if any(p.relation == t.relation and p.tail == t.tail for p in pairs):
            found += 1
            assert all(p.head in sentence or p.source == "linked" for p in pairs)
    assert found >= 5


def test_heldout_split_is_stable():
    keys = [(f"h{i}", "r", f"t{i}") for i in range(4000)]
    held = [heldout_triple(*k, 0.1) for k in keys]
    assert held == [heldout_triple(*k, 0.1) for k in keys]
    assert 0.08 < sum(held) / len(held) < 0.12
    assert not any(heldout_triple(*k, 0.0) for k in keys)

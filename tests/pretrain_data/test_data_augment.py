import numpy as np
import pytest

from wenzhi.model.augment import AugmentConfig, KnowledgeAugmenter
from wenzhi.model.knowledge_masking import EntityMasker
from wenzhi.model.masking import apply_masks, encode_example


@pytest.fixture(scope="module")
def described(kb_store, linker):
    """(text, entity) pairs where the linker ties the mention to an entity with a description."""
    out = []
    for entity in kb_store.iter_entities():
        if not entity.description or not 3 <= len(entity.base) <= 8 or len(kb_store.entities_by_base(entity.base)) != 1:
            continue
        text = f"你知道{entity.base}吗？我最近一直在看。"
        if any(m.entity is not None and m.entity.id == entity.id for m in linker.link(text)):
            out.append((text, entity))
        if len(out) == 5:
            break
    assert out, "no described entity in the KB slice"
    return out


def _masked_entity(tokenizer, linker, text, entity, rng):
    ex = encode_example(tokenizer, text)
    masker = EntityMasker(linker)
    masker.link(ex)
    start = text.index(entity.base)
    n_tokens = sum(1 for s, e in ex.offsets if s < start + len(entity.base) and e > start and e > s)
    spans = masker.select_spans(ex, rng, n_tokens)  # room for exactly the mention
    assert any(s.kind == "entity" for s in spans)
    ids, labels = apply_masks(ex.input_ids, spans, rng, tokenizer, ex.special_mask)
    return ex, ids, labels, [ex.entity_ids[k] for k in ex.entity_ids if k[0] == start]


def test_augmented_example_carries_the_entity_description(tokenizer, kb_store, linker, described):
    rng = np.random.default_rng(0)
    augmenter = KnowledgeAugmenter(kb_store, tokenizer, config=AugmentConfig(max_tokens=200))
    for text, entity in described:
        ex, ids, labels, entity_ids = _masked_entity(tokenizer, linker, text, entity, rng)
        assert entity_ids == [entity.id]
        out_ids, out_labels, out_types, sources = augmenter.augment(ids, labels, np.zeros(len(ids), np.int8), entity_ids, 256)
        assert sources == ["description"], augmenter.stats
        segment = out_ids[out_types == 2]
        assert segment[-1] == tokenizer.sep_token_id
        want = tokenizer(entity.description, add_special_tokens=False)["input_ids"]
        assert segment[:-1].tolist() == want[: len(segment) - 1]
        assert (out_labels[out_types == 2] == -100).all()
        assert (out_ids[: len(ids)] == ids).all() and (out_labels[: len(ids)] == labels).all()
    assert augmenter.stats.hit_rate == 1.0 and augmenter.stats.attempts == len(described)


def test_augmentation_respects_length_budget(tokenizer, kb_store, linker, described):
    rng = np.random.default_rng(1)
    augmenter = KnowledgeAugmenter(kb_store, tokenizer, config=AugmentConfig(max_tokens=96, min_tokens=8))
    text, entity = described[0]
    ex, ids, labels, entity_ids = _masked_entity(tokenizer, linker, text, entity, rng)
    for max_len in (len(ids) + 12, len(ids) + 30, 64):
        out_ids, _, out_types, sources = augmenter.augment(ids, labels, np.zeros(len(ids), np.int8), entity_ids, max_len)
        assert len(out_ids) <= max_len and sources
    out_ids, _, _, sources = augmenter.augment(ids, labels, np.zeros(len(ids), np.int8), entity_ids, len(ids) + 5)
    assert len(out_ids) == len(ids) and not sources  # less room than min_tokens: left alone
    assert augmenter.stats.no_room == 1 and augmenter.stats.augmented == 3


def test_triples_verbalised_when_no_description(tokenizer, kb_store):
    entity = next(e for e in kb_store.iter_entities() if not e.description and e.n_triples >= 3)
    augmenter = KnowledgeAugmenter(kb_store, tokenizer)
    text, source = augmenter.knowledge(entity.id)
    assert source == "triples" and text.startswith(entity.base)
    assert kb_store.triples(entity.id)[0].tail in text


def test_retrieved_passages_serve_as_knowledge_when_preferred(tokenizer, kb_store, data_dir, tmp_path):
    """REALM-style K_w: with `sources` putting retrieval first, the knowledge segment is the
    BM25 passage retrieved for the entity's name from a real tantivy index of CMRC paragraphs."""
    from wenzhi.retrieval import TantivyRetriever
    from wenzhi.retrieval.documents import passages_from_squad

    passages = list(passages_from_squad([data_dir / "cmrc2018" / "cmrc2018_trial.json"]))
    retriever = TantivyRetriever.build(tmp_path / "bm25", passages)
    chinese = [e for e in kb_store.iter_entities() if len(e.base) >= 2 and all("\u4e00" <= c <= "\u9fff" for c in e.base)]
    entity = next(e for e in chinese if retriever.search(e.base, k=1))
    augmenter = KnowledgeAugmenter(kb_store, tokenizer, retriever,
                                   AugmentConfig(sources=("retrieval", "description", "triples")))
    text, source = augmenter.knowledge(entity.id)
    assert source == "retrieval"
    assert text == retriever.search(entity.base, k=1)[0].fields["text"]
    # default order: the KB's own knowledge first, retrieval only as the last resort
    assert KnowledgeAugmenter(kb_store, tokenizer, retriever).knowledge(entity.id)[1] != "retrieval"
    with pytest.raises(ValueError, match="augment sources"):
        AugmentConfig(sources=("wikipedia",))

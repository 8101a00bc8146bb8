"""The KB prefix trie: every path it allows ends on a real (head, relation) of the KB."""
import random

import pytest
import torch

from wenzhi.qa_service.trie import KBTrie, encode_target


@pytest.fixture(scope="module")
def tokenizer():
    from wenzhi.model.tokenizer import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture(scope="module", params=["relation-first", "head-relation"])
def trie(request, kb_store, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("trie") / "trie"
    summary = KBTrie.build_from_store(kb_store, tokenizer, out, layout=request.param)
    assert summary["num_sequences"] > 1000 and summary["layout"] == request.param
    return KBTrie(out, tokenizer)


def _is_kb_pair(store, hit) -> bool:
    return bool(store.triples(hit.head_id, hit.relation))


def test_every_stored_sequence_maps_back_to_its_kb_pair(trie, kb_store):
    pairs = {(t.head_id, t.relation) for t in kb_store.iter_triples()}
    assert len(trie) == len(pairs)  # one row per distinct (head, relation)
    for row in range(0, len(trie), max(1, len(trie) // 300)):
        hits = trie.lookup(trie.sequence(row))
        assert hits and all((h.head_id, h.relation) in pairs for h in hits)


def test_random_walks_never_leave_the_kb(trie, kb_store):
    rng = random.Random(0)
    for _ in range(300):
        prefix = []
        while True:
            allowed = trie.allowed_next(prefix)
            if not allowed:
                break
            prefix.append(rng.choice(allowed))
            assert len(prefix) < 200
        hits = trie.lookup(prefix)
        assert hits, f"walk ended off the KB: {prefix}"
        assert all(_is_kb_pair(kb_store, h) for h in hits)


def test_a_real_head_with_a_relation_it_lacks_is_unreachable(trie, kb_store, tokenizer):
    entity = kb_store.entity_by_name("龙编站")
    assert entity is not None
    ids = encode_target(tokenizer, entity.name, "主讲课程", trie.layout)
    assert trie.lookup(ids) == []
    walked = []
    for token in ids:
        if token not in trie.allowed_next(walked):
            break
        walked.append(token)
    assert len(walked) < len(ids)  # the walk is cut off before the end
    good = encode_target(tokenizer, entity.name, "坐标", trie.layout)
    assert [(h.head_id, h.relation) for h in trie.lookup(good)] == [(entity.id, "坐标")]


def test_trie_refuses_a_different_tokenizer(trie, tokenizer, tmp_path):
    from wenzhi.model.tokenizer import load_tokenizer

    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    (tmp_path / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in vocab[:-1]), encoding="utf-8")
    with pytest.raises(ValueError, match="another tokenizer"):
        KBTrie(trie.path, load_tokenizer(tmp_path / "vocab.txt"))


def test_constrained_generation_with_an_untrained_model_only_yields_kb_pairs(trie, kb_store, tokenizer):
    from wenzhi.model.modeling import WenzhiConfig, WenzhiForPrefixLM

    torch.manual_seed(0)
    config = WenzhiConfig(vocab_size=len(tokenizer), hidden_size=32, num_universal_layers=1, num_nlu_layers=1,
                          num_nlg_layers=1, num_attention_heads=2, intermediate_size=64)
    model = WenzhiForPrefixLM(config).eval()
    enc = tokenizer(["刘晓华主要讲什么课啊？", "我很好奇龙编站的坐标是什么啊？"], padding=True, return_tensors="pt")
    result = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=48,
                            num_beams=3, num_return_sequences=3,
                            allowed_tokens_fn=lambda b, prefix: trie.allowed_next(prefix))
    produced = 0
    for seqs, scores in zip(result.sequences.tolist(), result.scores.tolist()):
        for seq, score in zip(seqs, scores):
            if score == float("-inf"):
                continue
            seq = seq[: seq.index(trie.sep_id) + 1]  # [SEP] is the end of sequence
            hits = trie.lookup(seq)
            assert hits and all(_is_kb_pair(kb_store, h) for h in hits)
            produced += 1
    assert produced >= 2


def test_trie_is_compact(trie):
    assert trie.meta["bytes"] / len(trie) < 64  # bytes per (head, relation) on disk


def test_distractor_relations_reach_every_head_and_nothing_else(trie, kb_store, tokenizer):
    from wenzhi.qa_service.trie import TrieWithDistractors

    distractors = [r for r, _ in kb_store.relation_counts()[:5]]
    extended = TrieWithDistractors(trie, tokenizer, distractors)
    entity = kb_store.entity_by_name("龙编站")
    lacking = next(r for r in distractors if not kb_store.triples(entity.id, r))
    ids = encode_target(tokenizer, entity.name, lacking, trie.layout)
    assert trie.lookup(ids) == []  # not a KB pair ...
    walked = []
    for token in ids:
        assert token in extended.allowed_next(walked)  # ... but every step of it is allowed now
        walked.append(token)
    assert extended.allowed_next(walked) == []
    assert [(h.head_id, h.relation) for h in extended.lookup(ids)] == [(entity.id, lacking)]
    # the head's own relations stay reachable, a relation that is neither stays out
    own = encode_target(tokenizer, entity.name, "坐标", trie.layout)
    assert [(h.head_id, h.relation) for h in extended.lookup(own)] == [(entity.id, "坐标")]
    assert extended.lookup(encode_target(tokenizer, entity.name, "主讲课程", trie.layout)) == []
    rng = random.Random(1)
    for _ in range(200):  # random walks end on a KB pair or a head with a distractor relation
        prefix = []
        while allowed := extended.allowed_next(prefix):
            prefix.append(rng.choice(allowed))
        hits = extended.lookup(prefix)
        assert hits and all(_is_kb_pair(kb_store, h) or h.relation in distractors for h in hits)


def test_relation_first_spells_the_base_name_then_the_relation_then_the_disambiguation(tokenizer):
    ids = encode_target(tokenizer, "刘晓华（广东工业大学教授）", "主讲课程", "relation-first")
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "刘", "晓", "华", "[unused1]", "主", "讲", "课", "程", "[unused2]", "广", "东", "工", "业", "大", "学", "教", "授",
        "[SEP]"]
    assert tokenizer.convert_ids_to_tokens(encode_target(tokenizer, "龙编站", "坐标", "relation-first")) == [
        "龙", "编", "站", "[unused1]", "坐", "标", "[SEP]"]


def test_distractors_reach_each_homonym_in_the_relation_first_layout(trie, kb_store, tokenizer):
    from wenzhi.kg import parse_name

    from wenzhi.qa_service.trie import TrieWithDistractors

    distractors = [r for r, _ in kb_store.relation_counts()[:5]]
    extended = TrieWithDistractors(trie, tokenizer, distractors)
    checked = 0
    for entity in kb_store.entities_by_base("刘晓华"):  # homonyms: every one of them offers every distractor
        for rel in distractors:
            ids = encode_target(tokenizer, entity.name, rel, trie.layout)
            walked = []
            for token in ids:
                assert token in extended.allowed_next(walked), (entity.name, rel)
                walked.append(token)
            assert (entity.id, rel) in {(h.head_id, h.relation) for h in extended.lookup(ids)}
            checked += 1
    assert checked >= 10 and len({parse_name(e.name)[1] for e in kb_store.entities_by_base("刘晓华")}) >= 2


def test_token_ids_equal_the_tokenizers_own_even_after_a_truncating_call(tokenizer, kb_store):
    """The trie's batch encoder (the tokenizer backend, directly) gives the wrapper's ids, and a
    truncation left set on the shared tokenizer by an earlier call does not reach it."""
    from wenzhi.qa_service.trie import token_ids

    texts = [t.head for t in kb_store.iter_triples()][:2000] + ["", "  ", "Mixed Case ABC 123", "长" * 300]
    tokenizer(["一二三四五六七八九十"], max_length=5, truncation=True)  # leaves truncation set on the backend
    assert tokenizer.backend_tokenizer.truncation is not None
    expected = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert token_ids(tokenizer, texts) == expected
    assert len(expected[-1]) == 300

"""The alias index on disk (no pickle: a planted one must not run), the automaton's matches and
the longest-match choice, KBs the old automaton could not serve (no multi-character name,
astral characters)."""
from __future__ import annotations

import pickle
import random
from array import array

import numpy as np
import pytest
from safetensors.numpy import load, save

from wenzhi import cli as wenzhi
from wenzhi.kg import AliasIndex, EntityLinker, TripleStore
from wenzhi.kg.alias_index import AliasIndexError


def _store(tmp_path, lines: list[str], name: str = "kb") -> TripleStore:
    src = tmp_path / f"{name}.txt"
    src.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    db = tmp_path / f"{name}.sqlite"
    TripleStore.import_files([src], db)
    return TripleStore(db)


class _Payload:
    """Unpickling this creates a file: what a planted alias index could do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_planted_pickle_is_not_run(tmp_path, capsys):
    store = _store(tmp_path, ["龙编站\t坐标\t北纬21度", "龙编站\t所属国家\t越南"])
    marker = tmp_path / "payload-ran"
    planted = AliasIndex.default_path(store)
    planted.write_bytes(pickle.dumps({"version": 4, "payload": _Payload(marker)}))

    # every way a user opens the KB: the linker (serve, prepare) and `wenzhi kg link`
    linker = EntityLinker(store)
    assert [m.entity.name for m in linker.link("龙编站的坐标")] == ["龙编站"]
    assert not marker.exists()
    planted.write_bytes(pickle.dumps(_Payload(marker)))
    assert wenzhi.main(["kg", "link", "龙编站的坐标", "--kb", str(store.path)]) == 0
    assert "龙编站" in capsys.readouterr().out
    assert not marker.exists()
    # the planted file was replaced by a real index, which loads as such
    assert AliasIndex.load(planted).fingerprint == store.fingerprint


def _corrupt(path, **changes) -> None:
    arrays = load(path.read_bytes())
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata()
    meta.update(changes.pop("metadata", {}))
    arrays.update(changes)
    path.write_bytes(save(arrays, metadata=meta))


@pytest.mark.parametrize("damage", ["truncated", "version", "offsets", "duplicate_key", "short_pattern", "foreign"])
def test_bad_index_files_are_rejected_and_rebuilt(tmp_path, damage):
    store = _store(tmp_path, ["龙编站\t坐标\t北纬21度", "刘晓华\t职业\t教授", "瘢\t拼音\tban"])
    path = AliasIndex.default_path(store)
    good = AliasIndex.for_store(store)
    arrays = load(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "version":
        _corrupt(path, metadata={"version": "4"})
    elif damage == "offsets":
        _corrupt(path, offsets=arrays["offsets"][::-1].copy())
    elif damage == "duplicate_key":
        keys = arrays["pattern_keys"].copy()
        keys[0] = keys[1]
        _corrupt(path, pattern_keys=keys)
    elif damage == "short_pattern":
        _corrupt(path, patterns=np.frombuffer("龙\n刘晓华".encode(), dtype=np.uint8))
    else:
        path.write_text('{"not": "an index"}')
    with pytest.raises(AliasIndexError):
        AliasIndex.load(path)
    rebuilt = AliasIndex.for_store(store)  # not trusted: rebuilt from the store, and saved again
    assert rebuilt.candidates("龙编站") == good.candidates("龙编站") != []
    assert AliasIndex.load(path).candidates("刘晓华") == good.candidates("刘晓华")


def test_stale_index_is_rebuilt(tmp_path):
    store = _store(tmp_path, ["龙编站\t坐标\t北纬21度"])
    AliasIndex.for_store(store)
    src = tmp_path / "again.txt"
    src.write_text("刘晓华\t职业\t教授\n", encoding="utf-8")
    TripleStore.import_files([src], store.path)  # re-import: a new fingerprint
    with TripleStore(store.path) as again:
        index = AliasIndex.for_store(again)
        assert index.fingerprint == again.fingerprint and index.candidates("龙编站") == []
        assert index.candidates("刘晓华") != []


def test_kb_without_multi_character_names(tmp_path):
    # every name one character: the automaton is empty (pyahocorasick raised "Not an
    # Aho-Corasick automaton yet" on the first text)
    store = _store(tmp_path, ["瘢\t拼音\tban", "癍\t拼音\tban", "斑\t释义\t斑点"])
    linker = EntityLinker(store)
    assert linker.link("他脸上有斑") == []  # 1-character mentions only via NER spans
    assert [m.entity.name for m in linker.link("他脸上有斑", spans=[(4, 5)])] == ["斑"]
    assert linker.link_many(["瘢痕", "", "斑点"]) == [[], [], []]
    assert [e.name for e, _, _ in linker.rank("斑的拼音是什么")] == ["斑"]


def test_astral_characters_in_names_and_text(tmp_path):
    # 𠮷 is outside the BMP; 鋐 folds (traditional -> simplified) to 𬭎, also outside it: the old
    # automaton saw both as U+FFFD and could never match these names
    store = _store(tmp_path, ["𠮷野家\t类型\t餐厅", "朱寿鋐\t在位时间\t1600年", "吉野\t类型\t地名"])
    linker = EntityLinker(store)
    found = linker.link("我在𠮷野家吃饭，朱寿鋐在位时间段是什么")
    assert [(m.text, m.entity.name) for m in found] == [("𠮷野家", "𠮷野家"), ("朱寿鋐", "朱寿鋐")]
    text = "我在𠮷野家吃饭"
    assert text[found[0].start : found[0].end] == "𠮷野家"
    assert linker.index.candidates("朱寿鋐") == linker.index.candidates("朱寿𬭎") != []
    assert linker.link("\ud800朱寿鋐")[0].entity.name == "朱寿鋐"  # a lone surrogate is no error


def _greedy_reference(found):
    """The definition: longest first, then leftmost, skipping overlaps with those taken."""
    taken, chosen = set(), []
    for s, e, k in sorted(found, key=lambda m: (m[0] - m[1], m[0])):
        if not taken.intersection(range(s, e)):
            taken.update(range(s, e))
            chosen.append((s, e, k))
    return sorted(chosen)


def test_longest_matches_is_the_longest_first_choice():
    rng = random.Random(0)
    for _ in range(1500):
        alphabet = "abcd"[: rng.randint(1, 4)]
        keys = sorted({"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5)))
                       for _ in range(rng.randint(1, 12))})
        rng.shuffle(keys)
        n = len(keys)
        index = AliasIndex.from_keys(keys, array("q", range(n + 1)), array("i", range(n)), array("f", [1.0] * n), "x")
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        for single in (False, True):
            found = index.matches(text, single_chars=single)
            assert sorted(found) == sorted({(i, i + len(key), k) for k, key in enumerate(keys)
                                            if (single or len(key) > 1)
                                            for i in range(len(text)) if text.startswith(key, i)})
            assert index.longest_matches(text, single_chars=single) == _greedy_reference(found), (keys, text)


def test_candidates_of_a_key_by_position(kb_store):
    """`key_candidates(key, limit)` is the first `limit` of the whole list (highest priors);
    `candidate_count` and `first_candidate` read the same arrays."""
    index = AliasIndex.for_store(kb_store)
    sizes = set()
    for key_id in range(0, len(index), 97):
        whole = index.key_candidates(key_id)
        sizes.add(len(whole))
        assert index.candidate_count(key_id) == len(whole)
        assert index.first_candidate(key_id) == whole[0][0]
        for limit in (1, 2, 30):
            assert index.key_candidates(key_id, limit) == whole[:limit]
    assert 1 in sizes and max(sizes) > 2

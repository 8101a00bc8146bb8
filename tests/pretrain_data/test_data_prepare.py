import argparse
import json

import numpy as np
import pytest

from wenzhi.model import prepare as prepare_cli
from wenzhi.model.prepare import PrepareConfig, prepare
from wenzhi.model.shards import ShardReader
from wenzhi.model.uktp import heldout_triple

SEQ_LEN = 96


def _config(tmp_path, kb_db, seed=7, name="shards"):
    return {
        "output": str(tmp_path / name), "seq_len": SEQ_LEN, "seed": seed, "kb": str(kb_db),
        "mask_ratio": 0.15, "heldout_fraction": 0.3, "rows_per_shard": 64,
        "corpora": [
            {"path": "corpus/people_daily_1998_pos.txt", "format": "people_daily", "limit": 60},
            {"path": "corpus/reviews_neg.txt", "format": "text", "limit": 40},
            {"path": "corpus/agrikg_distant_supervision.tsv", "format": "agrikg", "limit": 60},
            {"path": "kdconv/travel/dev.json", "format": "kdconv", "use": "both", "limit": 3},
        ],
        "strategies": {"char": 1, "word": 1, "phrase": 1, "entity": 1, "retrieval": 2, "uktp": 1},
        "curriculum": "default",
        "augment": {"max_tokens": 40, "min_tokens": 8},
    }


def _arrays(out):
    reader = ShardReader(out)
    return reader, reader.batch(np.arange(len(reader)))


def _docs(rows):
    """(kind, ids, labels, types) per packed document."""
    for r in range(len(rows["kind"])):
        doc = rows["document_ids"][r]
        for d in np.unique(doc[doc >= 0]):
            sel = doc == d
            yield int(rows["kind"][r]), rows["input_ids"][r][sel], rows["labels"][r][sel], rows["token_type_ids"][r][sel]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, kb_db):
    tmp = tmp_path_factory.mktemp("prep")
    cfg_path = tmp / "prep.json"
    cfg_path.write_text(json.dumps(_config(tmp, kb_db)))
    parser = argparse.ArgumentParser()
    prepare_cli.add_arguments(parser)
    assert prepare_cli.main(parser.parse_args(["--config", str(cfg_path), "--no-progress"])) == 0
    return tmp


def test_statistics_reconcile(prepared):
    reader, rows = _arrays(prepared / "shards")
    meta = reader.meta
    writer, prep = meta["stats"], meta["stats"]["prepare"]
    docs = list(_docs(rows))
    assert prep["examples"] == sum(prep["examples_per_strategy"].values()) == sum(prep["examples_per_kind"].values())
    assert prep["examples"] == writer["documents"] == len(docs)
    assert prep["tokens"] == writer["tokens"] == int((rows["document_ids"] >= 0).sum())
    labelled = int((rows["labels"] != -100).sum())
    assert prep["masked_tokens"] == writer["masked_tokens"] == labelled == sum(prep["masked_tokens_per_unit"].values())
    for kind in range(4):
        in_kind = [d for d in docs if d[0] == kind]
        assert prep["examples_per_kind"].get(str(kind), 0) == len(in_kind)
        assert prep["masked_tokens_per_kind"].get(str(kind), 0) == sum(int((d[2] != -100).sum()) for d in in_kind)
    aug = prep["augmentation"]
    assert aug["augmented"] == prep["examples_per_kind"]["3"] > 0
    assert aug["attempts"] == aug["augmented"] + aug["no_knowledge"] + aug["no_room"]
    assert prep["examples_per_strategy"]["retrieval"] >= aug["attempts"]
    assert 0.05 < prep["masked_tokens"] / prep["tokens"] < 0.2
    assert set(prep["examples_per_stage"]) == {"0", "1", "2"}
    assert prep["documents"] == sum(prep["documents_per_corpus"].values())


def test_examples_well_formed(prepared, tokenizer):
    _, rows = _arrays(prepared / "shards")
    specials = set(tokenizer.all_special_ids) - {tokenizer.mask_token_id}
    for kind, ids, labels, types in _docs(rows):
        assert len(ids) <= SEQ_LEN
        original = np.where(labels != -100, labels, ids)
        assert original[0] == tokenizer.cls_token_id and original[-1] == tokenizer.sep_token_id
        assert not any(int(t) in specials for t in labels[labels != -100])  # specials never predicted
        kinds_types = set(types.tolist())
        if kind in (0, 1):
            assert kinds_types == {0}
        elif kind == 2:
            assert kinds_types == {0, 1} and len(set(types[labels != -100].tolist())) == 1
        else:
            assert 2 in kinds_types and (labels[types == 2] == -100).all()


def test_curriculum_short_then_long(prepared):
    reader, rows = _arrays(prepared / "shards")
    lengths = [len(d[1]) for d in _docs(rows) if d[0] in (0, 1)]
    n = len(lengths) // 4
    assert np.mean(lengths[:n]) < np.mean(lengths[-n:])
    stages = reader.meta["curriculum"]
    assert [s["seq_len"] for s in stages] == [24, 48, SEQ_LEN]


def test_heldout_triples_left_out(prepared, tokenizer, data_dir):
    from itertools import islice

    from wenzhi.model.corpora import read_agrikg

    reader, rows = _arrays(prepared / "shards")
    held = [p for p in islice(read_agrikg(data_dir / "corpus" / "agrikg_distant_supervision.tsv"), 60)
            if heldout_triple(p.head, p.relation, p.tail, 0.3)]
    assert held and reader.meta["stats"]["prepare"]["heldout_pairs_excluded"] >= len(held)

    def joined(ids):
        return "".join(t.removeprefix("##") for t in tokenizer.convert_ids_to_tokens([int(i) for i in ids]))

    held_strings = {joined(tokenizer(f"{p.head} {p.relation} {p.tail}", add_special_tokens=False)["input_ids"]) for p in held}
    triples = 0
    for kind, ids, labels, types in _docs(rows):
        if kind == 2:
            original = np.where(labels != -100, labels, ids)
            triple = original[(types == 1)][1:-1]  # drop [CLS] and [SEP]
            assert joined(triple) not in held_strings
            triples += 1
    assert triples > 20


def test_deterministic_for_a_seed(prepared, kb_db, tmp_path):
    again = prepare(PrepareConfig.from_dict(_config(tmp_path, kb_db, name="again")), show_progress=False)
    prepare(PrepareConfig.from_dict(_config(tmp_path, kb_db, seed=8, name="other")), show_progress=False)
    _, first = _arrays(prepared / "shards")
    _, second = _arrays(tmp_path / "again")
    _, third = _arrays(tmp_path / "other")
    for key in ("input_ids", "labels", "token_type_ids", "document_ids", "kind"):
        assert np.array_equal(first[key], second[key]), key
    assert not np.array_equal(first["labels"], third["labels"][: len(first["labels"])]) or len(first["labels"]) != len(third["labels"])
    assert again["stats"]["prepare"]["examples_per_strategy"] == json.loads((prepared / "shards" / "meta.json").read_text())["stats"]["prepare"]["examples_per_strategy"]


def test_bad_config_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"output": str(tmp_path / "x"), "corpora": [], "strategies": {"wwm": 1}}))
    parser = argparse.ArgumentParser()
    prepare_cli.add_arguments(parser)
    assert prepare_cli.main(parser.parse_args(["--config", str(path)])) == 2
    assert "unknown strategies" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

"""Dense faiss indexes with a real (tiny, randomly initialised) BERT encoder saved to disk."""
from __future__ import annotations

import json

import numpy as np
import pytest

from wenzhi import cli as wenzhi
from wenzhi.retrieval.encoder import TransformersEncoder, model_fingerprint
from wenzhi.retrieval.faiss_index import FaissIndex, Manifest, StaleIndexError, build_faiss_index
from wenzhi.retrieval.refresh import IndexRefresher


@pytest.fixture(scope="module")
def encoders(tiny_encoder_dirs):
    return tuple(TransformersEncoder(d, max_length=64) for d in tiny_encoder_dirs)


@pytest.fixture(scope="module")
def passages(cmrc_passages):
    return cmrc_passages[0][:120]


class BreaksAfter:
    """A real encoder that fails on its n-th call, as a crash part-way through a build would."""

    def __init__(self, encoder, calls: int):
        self.encoder, self.calls = encoder, calls
        self.dim, self.fingerprint = encoder.dim, encoder.fingerprint

    def encode(self, texts):
        self.calls -= 1
        if self.calls < 0:
            raise RuntimeError("encoder crashed part-way")
        return self.encoder.encode(texts)


def test_retrieval_encoder_vectors_and_fingerprint(encoders, tiny_encoder_dirs):
    a, b = encoders
    v = a.encode(["龙编站的坐标", "守望星光", ""])
    assert v.shape == (3, 32) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert a.fingerprint == model_fingerprint(tiny_encoder_dirs[0]) != b.fingerprint


@pytest.mark.parametrize("index_string", ["Flat", "IVF4,Flat", "HNSW16"])
def test_retrieval_dense_finds_passages(index_string, encoders, passages, tmp_path):
    enc = encoders[0]
    m = build_faiss_index(passages, enc, tmp_path / "dense", index_string, kind="passage", batch_size=32,
                          add_chunk=50, progress=False)
    assert (m.count, m.dim, m.metric, m.index_string) == (len(passages), 32, "inner_product", index_string)
    assert m.encoder_fingerprint == enc.fingerprint
    index = FaissIndex(tmp_path / "dense", enc, search_params="nprobe=4" if index_string.startswith("IVF") else None)
    # a document's own text is its nearest neighbour (cosine 1)
    for doc in passages[::20]:
        top = index.search(doc.embedding_text(), 3)[0]
        assert top.id == doc.id and top.kind == "passage" and top.fields["title"] == doc.title
        assert top.score == pytest.approx(1.0, abs=1e-4)
    assert index.search(passages[0].title, 5, {"kind": "entity"}) == []


def test_retrieval_dense_finds_kb_entities(encoders, kb_store, tmp_path):
    from itertools import islice

    from wenzhi.retrieval.documents import entity_documents

    docs = list(islice(entity_documents(kb_store), 300))
    build_faiss_index(docs, encoders[0], tmp_path / "ents", "Flat", kind="entity", progress=False)
    index = FaissIndex(tmp_path / "ents", encoders[0])
    for doc in docs[::50]:
        hit = index.search(doc.embedding_text(), 1, {"kind": "entity"})[0]
        assert hit.id == doc.id and hit.fields["entity_id"] == doc.fields["entity_id"]


def test_retrieval_stale_index_is_refused(encoders, passages, tmp_path):
    a, b = encoders
    build_faiss_index(passages[:40], a, tmp_path / "dense", "Flat", kind="passage", progress=False)
    with pytest.raises(StaleIndexError, match="stale dense index.*wenzhi index build"):
        FaissIndex(tmp_path / "dense", b)
    # an index opened without an encoder loads the one it was built with, and checks it
    assert FaissIndex(tmp_path / "dense").search(passages[0].embedding_text(), 1)[0].id == passages[0].id


def test_retrieval_interrupted_build_keeps_old_index(encoders, passages, tmp_path):
    a = encoders[0]
    out = tmp_path / "dense"
    old = build_faiss_index(passages[:60], a, out, "Flat", kind="passage", batch_size=16, progress=False)
    with pytest.raises(RuntimeError, match="crashed part-way"):
        build_faiss_index(passages, BreaksAfter(a, calls=3), out, "HNSW16", kind="passage", batch_size=16, progress=False)
    assert Manifest.read(out) == old
    assert FaissIndex(out, a).search(passages[5].embedding_text(), 1)[0].id == passages[5].id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense"]  # no half-built directory left
    with pytest.raises(ValueError, match="faiss cannot make index"):
        build_faiss_index(passages, a, out, "NoSuchIndex99", progress=False)
    assert Manifest.read(out) == old


def test_retrieval_refresh_hook_rebuilds_from_newer_checkpoint(tiny_encoder_dirs, passages, tmp_path):
    a_dir, b_dir = tiny_encoder_dirs
    out = tmp_path / "dense"
    built = []
    refresher = IndexRefresher(lambda: passages[:40], out, "Flat", kind="passage", every_steps=100,
                               on_built=built.append)
    assert refresher.maybe_refresh(50, a_dir) is None
    refresher.maybe_refresh(100, a_dir).result(timeout=120)
    assert Manifest.read(out).encoder_fingerprint == model_fingerprint(a_dir)
    refresher.refresh(b_dir)
    refresher.wait()
    assert Manifest.read(out).encoder_fingerprint == model_fingerprint(b_dir)
    assert [m.encoder_fingerprint for m in built] == [model_fingerprint(a_dir), model_fingerprint(b_dir)]
    # a refresh that fails (here: a checkpoint directory without a model) keeps the index
    future = refresher.refresh(tmp_path / "missing-checkpoint")
    with pytest.raises(Exception):
        future.result(timeout=60)
    assert Manifest.read(out).encoder_fingerprint == model_fingerprint(b_dir)
    refresher.close()


def test_retrieval_index_cli_build_and_search(tiny_encoder_dirs, data_dir, tmp_path, capsys):
    a_dir, b_dir = tiny_encoder_dirs
    out = tmp_path / "cli-index"
    source = str(data_dir / "cmrc2018" / "cmrc2018_trial.json")
    rc = wenzhi.main(["index", "build", "--encoder", str(a_dir), "--kind", "passages", "--source", source,
                      "--limit", "50", "--index-type", "HNSW8", "--output", str(out), "--batch-size", "16"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 50 and manifest["index_string"] == "HNSW8" and manifest["kind"] == "passage"
    capsys.readouterr()
    assert wenzhi.main(["index", "search", "--index", str(out), "-k", "3", "泡泡战士"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["rank"] for r in rows] == [1, 2, 3] and all(r["id"].startswith("passage:") for r in rows)
    assert wenzhi.main(["index", "search", "--index", str(out), "--encoder", str(b_dir), "泡泡战士"]) == 2
    assert "stale dense index" in capsys.readouterr().err
    assert wenzhi.main(["index", "search", "--index", str(out), "   "]) == 2
    assert "empty query" in capsys.readouterr().err
    assert wenzhi.main(["index", "build", "--encoder", str(a_dir), "--kind", "entities", "--output", str(tmp_path / "x")]) == 2
    assert "--kb" in capsys.readouterr().err

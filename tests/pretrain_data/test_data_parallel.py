"""Parallel and distributed preparation: the same bytes for 1 and 2 workers, after a kill and
resume, and on a local Dask cluster; partitions read only their own items."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import pytest

from wenzhi.model.prepare import PrepareConfig, prepare
from wenzhi.model.prepare_config import CorpusSpec
from wenzhi.model.prepare_plan import (STRIDE, corpus_records, index_corpus, items_before, plan_partitions, position,
                                       read_partition, read_range)


def _config(tmp_path: Path, kb_db, name: str, **extra) -> dict:
    return {
        "output": str(tmp_path / name), "seq_len": 64, "seed": 5, "kb": str(kb_db), "heldout_fraction": 0.2,
        "partition_items": 45, "rows_per_shard": 40,
        "corpora": [
            {"path": "corpus/people_daily_1998_pos.txt", "format": "people_daily", "limit": 50},
            {"path": "corpus/reviews_neg.txt", "format": "text", "skip": 10, "limit": 50},
            {"path": "corpus/agrikg_distant_supervision.tsv", "format": "agrikg", "limit": 50},
            {"path": "kdconv/travel/dev.json", "format": "kdconv", "use": "both", "limit": 4},
        ],
        "strategies": {"char": 1, "word": 1, "phrase": 1, "entity": 1, "retrieval": 1, "uktp": 1},
        "curriculum": "default", "augment": {"max_tokens": 24, "min_tokens": 4}, **extra,
    }


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory, kb_db):
    tmp = tmp_path_factory.mktemp("one")
    meta = prepare(PrepareConfig.from_dict(_config(tmp, kb_db, "shards")), show_progress=False)
    return tmp / "shards", meta


def test_interleaving_has_a_closed_form():
    """position() and items_before() agree with taking, item by item, from the corpus furthest
    behind its share (ties: the earlier corpus)."""
    for totals in ([5, 3, 7], [4, 0, 4, 2], [1, 1, 1], [12, 5, 8, 3], [30]):
        done, order = [0] * len(totals), []
        live = [i for i, t in enumerate(totals) if t]
        while live:
            c = min(live, key=lambda j: (done[j] * 10**9 // totals[j], j))
            order.append((c, done[c]))
            done[c] += 1
            live = [i for i in live if done[i] < totals[i]]
        assert [position(k, c, totals) for c, k in order] == list(range(sum(totals)))
        for p in range(sum(totals) + 1):
            assert [items_before(p, c, totals) for c in range(len(totals))] == [
                sum(1 for c2, _ in order[:p] if c2 == c) for c in range(len(totals))]
    plans = plan_partitions([12, 5, 8, 3], 7)
    assert [(p.start, p.stop) for p in plans] == [(0, 7), (7, 14), (14, 21), (21, 28)]
    assert [sum(b - a for a, b in p.ranges) for p in plans] == [7, 7, 7, 7]


@pytest.mark.parametrize("spec", [
    CorpusSpec("corpus/people_daily_1998_pos.txt", "people_daily", limit=700, skip=3),
    CorpusSpec("corpus/agrikg_distant_supervision.tsv", "agrikg", use="both", limit=900),
    CorpusSpec("kdconv/travel/dev.json", "kdconv", use="triples", limit=600),
    CorpusSpec("kdconv/music/dev.json", "kdconv", use="both", limit=40),
], ids=lambda s: f"{s.format}-{s.use}")
def test_ranges_read_from_checkpoints_equal_a_full_read(spec, data_dir):
    path = data_dir / spec.path
    everything = [item for _, item in islice(corpus_records(spec, path), spec.skip, spec.skip + spec.limit)]
    index = index_corpus(spec, path)
    assert index.total == len(everything) and len(index.checkpoints) == -(-len(everything) // STRIDE)
    for first, stop in ((0, 5), (STRIDE - 2, STRIDE + 3), (len(everything) - 7, len(everything)), (300, 300)):
        assert list(read_range(spec, path, index, first, stop)) == everything[first:stop], (first, stop)


def test_partitions_hold_every_item_once(data_dir):
    specs = [CorpusSpec("corpus/reviews_pos.txt", "text", limit=300), CorpusSpec("kdconv/film/dev.json", "kdconv", limit=40),
             CorpusSpec("corpus/agrikg_distant_supervision.tsv", "agrikg", limit=120)]
    paths = [data_dir / s.path for s in specs]
    indexes = [index_corpus(s, p) for s, p in zip(specs, paths)]
    plans = plan_partitions([ix.total for ix in indexes], 64)
    seen = [(it.position, it.corpus, it.index) for plan in plans for it in read_partition(plan, specs, paths, indexes)]
    assert [p for p, _, _ in seen] == list(range(460))
    assert sorted((c, k) for _, c, k in seen) == [(c, k) for c, n in enumerate((300, 40, 120)) for k in range(n)]


def test_two_workers_give_the_same_bytes(one_worker, tmp_path, kb_db):
    out, meta = one_worker
    assert meta["partitions"] == 4 and len(meta["shards"]) > meta["partitions"]  # several shards per partition
    two = prepare(PrepareConfig.from_dict(_config(tmp_path, kb_db, "two")), show_progress=False, workers=2)
    assert two["run"]["workers"] == 2
    assert _files(out) == _files(tmp_path / "two")


# `python -m wenzhi ...` that SIGKILLs itself as its third partition starts. Polling for a finished
# partition and then killing raced the job itself: prepare's small test job now finishes in well
# under a second, sometimes between two polls.
KILLED_AT_THIRD_PARTITION = """
import os, signal, sys
import wenzhi.model.prepare as prepare
from wenzhi.cli import main
finished = []
real = prepare.run_partition
def run_partition(*args, **kwargs):
    if len(finished) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    finished.append(real(*args, **kwargs))
    return finished[-1]
prepare.run_partition = run_partition
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_a_kill_gives_the_same_bytes(one_worker, tmp_path, kb_db):
    """A run killed (SIGKILL) after its first two partitions, started again, equals one that was not."""
    out, _ = one_worker
    config = tmp_path / "prep.json"
    config.write_text(json.dumps(_config(tmp_path, kb_db, "resumed", partition_items=45)))
    args = ["pretrain", "prepare", "--config", str(config), "--no-progress"]
    env = dict(os.environ, WENZHI_DATA=str(Path(os.environ.get("WENZHI_DATA", "../shared/data")).resolve()))
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_THIRD_PARTITION, *args], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (tmp_path / "resumed.partial" / "part-00001" / "meta.json").exists()
    assert not (tmp_path / "resumed").exists()
    again = subprocess.run([sys.executable, "-m", "wenzhi", *args], env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["resumed_partitions"] == 2 and summary["partitions"] == 4
    assert _files(out) == _files(tmp_path / "resumed")


def test_local_dask_cluster_gives_the_same_bytes(one_worker, tmp_path, kb_db):
    pytest.importorskip("dask.distributed", reason="Dask not installed: pip install 'wenzhi[distributed]'")
    out, _ = one_worker
    meta = prepare(PrepareConfig.from_dict(_config(tmp_path, kb_db, "dask")), show_progress=False, workers=2, engine="dask")
    assert meta["run"]["engine"] == "dask"
    assert _files(out) == _files(tmp_path / "dask")


def test_a_changed_config_is_not_resumed(tmp_path, kb_db):
    cfg = PrepareConfig.from_dict(_config(tmp_path, kb_db, "x", corpora=[
        {"path": "corpus/reviews_neg.txt", "format": "text", "limit": 30}], strategies={"word": 1}, kb=None,
        partition_items=10))
    prepare(cfg, show_progress=False)
    staging = tmp_path / "x.partial"
    staging.mkdir()
    (staging / "job.json").write_text(json.dumps({"fingerprint": "another job", "indexes": []}))
    (staging / "part-00000").mkdir()
    meta = prepare(cfg, show_progress=False)
    assert meta["run"]["resumed_partitions"] == 0 and not staging.exists()


@pytest.mark.slow
def test_a_dask_worker_killed_midway_changes_nothing(tmp_path, kb_db):
    """SIGKILL one worker of a local Dask cluster after its first partitions: Dask restarts it
    and reruns what it held, and the shards are still the same bytes."""
    pytest.importorskip("dask.distributed", reason="Dask not installed: pip install 'wenzhi[distributed]'")
    import psutil

    config = tmp_path / "prep.json"
    config.write_text(json.dumps(_config(tmp_path, kb_db, "killed", partition_items=12)))
    command = [sys.executable, "-m", "wenzhi", "pretrain", "prepare", "--config", str(config), "--no-progress",
               "--engine", "dask", "--workers", "2"]
    env = dict(os.environ, WENZHI_DATA=str(Path(os.environ.get("WENZHI_DATA", "../shared/data")).resolve()))
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staging = tmp_path / "killed.partial"
    deadline = time.monotonic() + 180
    while len(list(staging.glob("part-*/meta.json"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if any("spawn_main" in a for a in p.cmdline()) and not any("resource_tracker" in a for a in p.cmdline())]
    workers[0].send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Restarting worker" in err
    reference = prepare(PrepareConfig.from_dict(_config(tmp_path, kb_db, "reference", partition_items=12)),
                        show_progress=False)
    assert reference["partitions"] == 13
    assert _files(tmp_path / "reference") == _files(tmp_path / "killed")


def test_a_worker_moves_its_setup_out_of_the_collectors_sight(tmp_path, kb_db):
    """settle_gc freezes what a worker loaded (the linker's scorer included), after freeing the
    garbage cycles a previous job left frozen."""
    import gc
    import weakref

    from wenzhi.model.prepare_job import Resources, settle_gc

    class Node:
        pass

    earlier = Node()
    earlier.self = earlier  # a cycle: only the collector frees it
    gone = weakref.ref(earlier)
    gc.collect()
    gc.freeze()  # as a previous job's settle_gc would have left it
    del earlier
    res = Resources(PrepareConfig.from_dict(_config(tmp_path, kb_db, "unused")))
    try:
        settle_gc(res)
        assert gone() is None
        assert gc.get_freeze_count() > 1000
        assert [m.text for m in res.linker.link("守望星光是韩玉玲、刘东考演唱的歌曲吗") if m.entity]  # still links
    finally:
        gc.unfreeze()
        res.close()

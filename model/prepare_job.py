"""One preparation job as a chain of stages mapped over partitions:

    read -> link -> tokenise -> mask/UKTP/augment -> pack -> write        (run_partition)

`run_partition(job, plan)` is the whole chain for one partition: it reads the partition's items
(model/prepare_plan.py), builds its examples (model/prepare_examples.py), packs them and writes a
complete shard directory `part-NNNNN/`, atomically (a temporary name, renamed when done). It is
a pure function of (job, plan): any executor may run it, on any worker, more than once (a retry
after a lost worker finds the directory there and returns). Masking works on WordPiece tokens, so
tokenising comes before masking in the chain.

The job's staging directory `OUTPUT.partial/` holds `job.json` (config fingerprint, corpus
indexes) and the finished partitions; `merge` writes the top-level `meta.json` (partitions'
shards in order, statistics summed) and renames the directory to OUTPUT. A killed job leaves
OUTPUT as it was, and the same command resumes it: finished partitions are kept, the rest run.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wenzhi.model.prepare_config import TEXT_STRATEGIES, PrepareConfig
from wenzhi.model.prepare_plan import CorpusIndex, PartitionPlan, read_partition

FORMAT = "wenzhi-prepare-v2"  # bump when the same config would give different shards
STAGES = ("read", "link", "tokenise", "mask", "pack", "write")


@dataclass
class Job:
    """What every worker needs, as plain data (sent to other processes and machines)."""

    cfg: PrepareConfig
    paths: list[str]  # resolved corpus paths, in config order
    indexes: list[CorpusIndex]
    fingerprint: str
    staging: str  # OUTPUT.partial

    @property
    def grand_total(self) -> int:
        return sum(ix.total for ix in self.indexes)


def part_name(number: int) -> str:
    return f"part-{number:05d}"


# -- what a worker loads once ---------------------------------------------------------------------
def build_curriculum(cfg: PrepareConfig):
    """The config's curriculum, checked against seq_len and the KB (before anything runs)."""
    from wenzhi.model.knowledge_masking import Curriculum

    if cfg.curriculum is None:
        curriculum = Curriculum.from_config([{"until": 1.0, "strategies": cfg.strategies}], cfg.seq_len)
    elif cfg.curriculum == "default":
        curriculum = Curriculum.default(cfg.seq_len, cfg.strategies)
    else:
        curriculum = Curriculum.from_config(list(cfg.curriculum), cfg.seq_len)
    for stage in curriculum.stages:
        if stage.max_len > cfg.seq_len:
            raise ValueError(f"curriculum stage seq_len {stage.max_len} exceeds seq_len {cfg.seq_len}")
        used = {k for k, w in stage.weights.items() if w > 0}
        if used & {"retrieval", "uktp"} and not cfg.kb:
            raise ValueError(f"strategies {sorted(used & {'entity', 'retrieval', 'uktp'})} need a KB store (config key 'kb')")
        bad = set(stage.weights) - set(TEXT_STRATEGIES)
        if bad:
            raise ValueError(f"unknown strategies {sorted(bad)} in the curriculum")
    return curriculum


def retrieval_setting(cfg: PrepareConfig):
    """The config's BM25 index for retrieval augmentation: a tantivy directory (resolved like every
    path) or a cluster URL, whose credentials each process reads from its environment: a URL
    holding one is refused, since the config is sent to workers and saved with the shards."""
    from urllib.parse import urlsplit

    from wenzhi.retrieval.bm25 import ENV_PASSWORD, ENV_USER, is_cluster_url, search_setting

    if not cfg.retrieval_index:
        return None
    if not is_cluster_url(cfg.retrieval_index):
        return search_setting(str(cfg.resolve(cfg.retrieval_index)))
    if urlsplit(cfg.retrieval_index).username is not None:
        raise ValueError(f"retrieval_index: a URL with credentials in it is saved with the shards; "
                         f"give them in {ENV_USER} and {ENV_PASSWORD} (or --search-user/--search-password)")
    return search_setting(cfg.retrieval_index)


class Resources:
    """Tokenizer, KB store, linker, maskers and augmenter of one process."""

    def __init__(self, cfg: PrepareConfig, retriever=None):
        from wenzhi.model.augment import AugmentConfig, KnowledgeAugmenter
        from wenzhi.model.knowledge_masking import EntityMasker, PhraseMasker
        from wenzhi.model.masking import CharMasker, WholeWordMasker, continuation_ids
        from wenzhi.model.tokenizer import load_tokenizer
        from wenzhi.model.uktp import UKTPConfig, heldout_triple

        self.cfg = cfg
        self.curriculum = build_curriculum(cfg)
        self.tokenizer = load_tokenizer(cfg.resolve(cfg.tokenizer) if cfg.tokenizer else None)
        self.store = self.linker = None
        if cfg.kb:
            from wenzhi.kg import EntityLinker, TripleStore

            self.store = TripleStore(cfg.resolve(cfg.kb))
            self.linker = EntityLinker(self.store)
        if retriever is None and cfg.retrieval_index:
            from wenzhi.retrieval.bm25 import open_bm25

            retriever = open_bm25(retrieval_setting(cfg))  # this process's own client or reader
        frac = cfg.heldout_fraction
        self.is_heldout = lambda h, r, t: heldout_triple(h, r, t, frac)
        self.augmenter = (KnowledgeAugmenter(self.store, self.tokenizer, retriever, AugmentConfig(**cfg.augment),
                                             exclude_triple=self.is_heldout) if self.store is not None else None)
        self.maskers = {"char": CharMasker(), "word": WholeWordMasker(), "phrase": PhraseMasker(),
                        "entity": EntityMasker(self.linker), "retrieval": EntityMasker(self.linker)}
        self.uktp_config = UKTPConfig(**cfg.uktp) if cfg.uktp else UKTPConfig()
        self.stage_strategies = []
        for stage in self.curriculum.stages:
            names = [k for k, w in stage.weights.items() if w > 0]
            weights = np.array([stage.weights[k] for k in names], float)
            self.stage_strategies.append((names, np.cumsum(weights / weights.sum()).tolist()))
        self.is_continuation = continuation_ids(self.tokenizer)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


_LOADED: dict[tuple, Resources] = {}


def preload() -> None:
    """Import what every worker needs (about a second of CPU each), so forked workers share it."""
    from transformers import PreTrainedTokenizerFast  # noqa: F401

    import wenzhi.kg  # noqa: F401
    import wenzhi.model.augment  # noqa: F401
    import wenzhi.model.knowledge_masking  # noqa: F401
    import wenzhi.model.segment  # noqa: F401
    import wenzhi.model.tokenizer  # noqa: F401
    import wenzhi.model.uktp  # noqa: F401


def resources(job: Job, retriever=None) -> Resources:
    """This process's (and thread's) Resources for the job, loaded on its first partition. A
    process forked from one that had them loads its own: a SQLite connection must not cross a
    fork, nor be used from another thread."""
    import threading

    key = (job.fingerprint, os.getpid(), threading.get_ident())
    if key not in _LOADED:
        for old_key in [k for k in _LOADED if k[1:] == key[1:]]:
            _LOADED.pop(old_key).close()
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are the parallelism
        _LOADED[key] = Resources(job.cfg, retriever)
        settle_gc(_LOADED[key])
    return _LOADED[key]


def settle_gc(res: Resources) -> None:
    """Load the linker's scorer now and move everything loaded so far out of the collector's sight.
    Each full collection otherwise walks the ~77,000 objects that numba and the compiled scorer
    leave behind (a third of cold linking's CPU time: bench/RESULTS.md, h14g). Frozen objects are
    still freed by their reference counts; earlier frozen objects (a previous job's resources in a
    long-lived worker) are unfrozen first so that the collection can free them."""
    import gc

    if res.linker is not None:
        res.linker.warm()
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def release() -> None:
    """Close what this process loaded for in-process partitions (the KB store's connection)."""
    pid = os.getpid()
    for key in [k for k in _LOADED if k[1] == pid]:
        _LOADED.pop(key).close()


# -- one partition ------------------------------------------------------------------------------
def run_partition(job: Job, plan: PartitionPlan, retriever=None) -> dict:
    """Prepare one partition into `staging/part-NNNNN/`; returns its meta and CPU seconds per
    stage (under "run", which is not written to disk)."""
    from wenzhi.model.prepare_examples import ExampleBuilder
    from wenzhi.model.shards import ShardWriter

    final = Path(job.staging) / part_name(plan.number)
    if (final / "meta.json").exists():
        return _read_json(final / "meta.json")
    cpu = {}
    clock = time.process_time()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.process_time()
        cpu[stage] = cpu.get(stage, 0.0) + now - clock
        clock = now

    res = resources(job, retriever)
    lap("load")
    cfg = job.cfg
    items = read_partition(plan, cfg.corpora, [Path(p) for p in job.paths], job.indexes)
    lap("read")
    builder = ExampleBuilder(res, job.grand_total)
    texts, planned = builder.plan(items)
    builder.link(texts)
    lap("link")
    builder.tokenise(texts, planned)
    lap("tokenise")
    examples = []
    for p in planned:
        builder.mask(p, examples)
    lap("mask")
    # a name of this writer's own: a retried task that overlaps a slow first attempt cannot
    # touch the other's files; whichever renames first wins, the copies are identical
    tmp = final.with_name(f"{final.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    writer = ShardWriter(tmp, cfg.seq_len, len(res.tokenizer), tokenizer=str(res.tokenizer.name_or_path),
                         rows_per_shard=cfg.rows_per_shard, overflow="error", overwrite=True)
    try:
        for example in examples:
            writer.add(example)
        lap("pack")
        meta = writer.close(extra_stats={"prepare": builder.summary()},
                            extra_meta={"partition": plan.to_dict()})
    except BaseException:
        writer.abort()
        raise
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "meta.json").exists():
            raise
        shutil.rmtree(tmp)  # another attempt finished first
    lap("write")
    meta["run"] = {"cpu_seconds": cpu, "host": socket.gethostname(), "pid": os.getpid()}
    return meta


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# -- the job: fingerprint, staging, merge -------------------------------------------------------
def fingerprint(cfg: PrepareConfig, paths: list[Path]) -> str:
    """Changes when anything the shards depend on changes: the config (not where the output goes),
    the corpora files, the KB, the tokenizer's vocabulary, this code's output format."""

    def identity(path: Path | None):
        if path is None:
            return None
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]

    raw = cfg.to_dict()
    for key in ("output", "base_dir"):
        raw.pop(key, None)
    tokenizer = cfg.resolve(cfg.tokenizer) if cfg.tokenizer else None
    if tokenizer is None:
        from wenzhi.kg.datadir import data_path
        from wenzhi.model.tokenizer import DEFAULT_VOCAB

        tokenizer = data_path(DEFAULT_VOCAB)
    parts = {"format": FORMAT, "config": raw, "corpora": [identity(p) for p in paths],
             "kb": identity(cfg.resolve(cfg.kb)) if cfg.kb else None, "tokenizer": identity(Path(tokenizer)),
             "retrieval_index": retrieval_identity(retrieval_setting(cfg), identity)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def retrieval_identity(search, path_identity):
    """A tantivy index's files, or a cluster index's uuid and size (asked now: an unreachable
    cluster stops the job before any worker starts)."""
    if search is None:
        return None
    if not search.is_cluster:
        return path_identity(Path(search.location))
    from wenzhi.retrieval.bm25 import open_bm25

    return {"search": search.public, **open_bm25(search).identity()}


def open_staging(cfg: PrepareConfig, paths: list[Path], resume: bool, index_corpora) -> tuple[Job, bool]:
    """The job's staging directory: the one left by an earlier run of the same job (resume), or a
    fresh one. `index_corpora()` is called only when the indexes are not there yet."""
    out = Path(cfg.output)
    staging = out.with_name(out.name + ".partial")
    fp = fingerprint(cfg, paths)
    job_file = staging / "job.json"
    if resume and job_file.exists():
        try:
            saved = _read_json(job_file)
        except (OSError, ValueError):
            saved = {}
        if saved.get("fingerprint") == fp:
            # partitions a killed run was writing (and their writers' own staging, retrieval/atomic.py)
            for leftover in [*staging.glob("part-*.tmp-*"), *staging.glob(".part-*.building-*")]:
                shutil.rmtree(leftover, ignore_errors=True)
            indexes = [CorpusIndex.from_dict(ix) for ix in saved["indexes"]]
            return Job(cfg, [str(p) for p in paths], indexes, fp, str(staging)), True
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    indexes = index_corpora()
    tmp = staging / "job.json.tmp"
    tmp.write_text(json.dumps({"format": FORMAT, "fingerprint": fp,
                               "indexes": [ix.to_dict() for ix in indexes]}), encoding="utf-8")
    os.replace(tmp, job_file)
    return Job(cfg, [str(p) for p in paths], indexes, fp, str(staging)), False


def finished(job: Job, plan: PartitionPlan) -> bool:
    return (Path(job.staging) / part_name(plan.number) / "meta.json").exists()


def add_counts(total: dict, part: dict) -> dict:
    """Sum nested statistics (ints and dicts of ints); other values keep the first seen."""
    for key, value in part.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, dict)):
            total.setdefault(key, value)
        elif isinstance(value, dict):
            add_counts(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value
    return total


def merge(job: Job, plans: list[PartitionPlan], curriculum) -> dict:
    """Write `meta.json` over every partition's shards and move the staging directory to OUTPUT."""
    from wenzhi.retrieval.atomic import swap_into_place

    cfg = job.cfg
    metas = [_read_json(Path(job.staging) / part_name(p.number) / "meta.json") for p in plans]
    writer_stats: dict = {}
    for m in metas:
        part = {k: v for k, v in m["stats"].items() if k not in ("padding_fraction",)}
        add_counts(writer_stats, part)
    rows = sum(m["num_sequences"] for m in metas)
    slots = rows * cfg.seq_len
    writer_stats["padding_fraction"] = round(1 - writer_stats.get("tokens", 0) / slots, 6) if slots else 0.0
    augmentation = writer_stats.get("prepare", {}).get("augmentation")
    if augmentation:
        attempts = augmentation["attempts"]
        augmentation["hit_rate"] = round(augmentation["augmented"] / attempts, 4) if attempts else 0.0
    vocab_size = metas[0]["vocab_size"] if metas else None
    tokenizer = metas[0]["tokenizer"] if metas else None
    meta = {"format": "wenzhi-packed-v1", "seq_len": cfg.seq_len, "num_sequences": rows,
            "vocab_size": vocab_size, "tokenizer": tokenizer, "stats": _sorted_counts(writer_stats),
            "shards": [f"{part_name(p.number)}/{name}" for p, m in zip(plans, metas) for name in m["shards"]],
            "seed": cfg.seed, "heldout_fraction": cfg.heldout_fraction,
            "curriculum": [{"until": s.until, "seq_len": s.max_len, "strategies": s.weights} for s in curriculum.stages],
            "corpora": [{"path": p, "format": c.format, "use": c.use, "items": ix.total}
                        for c, p, ix in zip(cfg.corpora, job.paths, job.indexes)],
            "partitions": len(plans), "partition_items": cfg.partition_items, "prepare_format": FORMAT}
    staging = Path(job.staging)
    tmp = staging / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, staging / "meta.json")
    swap_into_place(staging, Path(cfg.output))
    return meta


def _sorted_counts(stats: dict) -> dict:
    """Keys in a fixed order, so meta.json is the same bytes however the partitions were merged."""
    return {k: (_sorted_counts(v) if isinstance(v, dict) else v) for k, v in sorted(stats.items())}


def stage_seconds(results: list[dict]) -> dict:
    total: Counter = Counter()
    for r in results:
        total.update(r.get("run", {}).get("cpu_seconds", {}))
    return {k: round(v, 3) for k, v in total.items()}

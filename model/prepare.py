"""`wenzhi pretrain prepare --config FILE`: corpora + KB -> masked, packed shards with statistics.

Config (YAML or JSON; paths relative to the data directory unless absolute or relative to the
config file and existing there):

    output: /tmp/wenzhi-shards      # shard directory (written atomically)
    seq_len: 128                     # row length of the packed shards
    seed: 13
    tokenizer: null                  # vocab.txt / directory; null = BERT Chinese vocabulary
    kb: /tmp/kb.sqlite               # TripleStore (needed by entity, retrieval, uktp and linking)
    mask_ratio: 0.15
    heldout_fraction: 0.1            # probe triples kept out of pretraining (see model/probe.py)
    corpora:
      - {path: corpus/people_daily_1998_pos.txt, format: people_daily, limit: 2000}
      - {path: corpus/reviews_pos.txt, format: text}
      - {path: corpus/agrikg_distant_supervision.tsv, format: agrikg}         # use: triples
      - {path: kdconv, format: kdconv, use: both}                              # text + triples
    strategies: {char: 1, word: 2, phrase: 1, entity: 2, retrieval: 1, uktp: 1}
    curriculum: default              # or null (flat mix), or a list of stages:
    #  - {until: 0.3, seq_len: 64, strategies: {char: 1, word: 1}}
    #  - {until: 1.0, seq_len: 128, strategies: {word: 1, entity: 1, uktp: 1}}
    uktp: {relation: 0.5, triple_entity: 0.25, sentence_entity: 0.25}
    augment: {max_tokens: 96, min_tokens: 8}
    retrieval_index: null            # BM25 passages for augmentation: a tantivy dir or https://HOST:9200/INDEX
    partition_items: 4096            # items per partition (the unit of parallel work)
    segmenter: rjieba                # or jieba (the slower Python original)

Running it (the shards are the same bytes for every line, whatever the number of workers):

    wenzhi pretrain prepare --config C                         one process
    wenzhi pretrain prepare --config C --workers 4             4 processes on this machine
    wenzhi pretrain prepare --config C --engine dask --workers 4                a local Dask cluster
    wenzhi pretrain prepare --config C --engine dask --scheduler tcp://HOST:8786 a Dask cluster

The corpora are interleaved in proportion to their sizes and cut into partitions of
`partition_items` items; each partition runs the stage chain of model/prepare_job.py and becomes
`part-NNNNN/` of the output. A killed run, started again with the same command, keeps the
partitions it finished (`--no-resume` starts over). The stages live in model/prepare_plan.py
(read), model/prepare_examples.py (link, tokenise, mask/UKTP/augment) and model/packing.py (pack).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from wenzhi.model.prepare_config import TEXT_STRATEGIES, CorpusSpec, PrepareConfig, load_config  # noqa: F401
from wenzhi.model.prepare_examples import KIND_KNOWLEDGE, KIND_PLAIN, KIND_RETRIEVAL, KIND_UKTP  # noqa: F401
from wenzhi.model.prepare_job import (build_curriculum, finished, merge, open_staging, preload, release,
                                      run_partition, stage_seconds)
from wenzhi.model.prepare_plan import index_corpus, plan_partitions
from wenzhi.retrieval.bm25 import add_search_arguments, search_from_args

ENGINES = ("local", "dask")


def prepare(cfg: PrepareConfig, show_progress: bool = True, retriever=None, overwrite: bool = True,
            workers: int = 1, engine: str = "local", scheduler: str | None = None, resume: bool = True) -> dict:
    """Run the whole preparation; returns the shard meta (with statistics) plus, under "run",
    timings and how the job ran (not written to disk: the output is the same bytes however it ran)."""
    from tqdm import tqdm

    started, cpu_started = time.perf_counter(), _cpu_seconds()
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if retriever is not None and (workers > 1 or engine != "local"):
        raise ValueError("a retriever object works in one process only; give the config a retrieval_index instead")
    out = Path(cfg.output)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    curriculum = build_curriculum(cfg)
    paths = [cfg.resolve(c.path) for c in cfg.corpora]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"corpus {path} not found")
    if cfg.kb and not cfg.resolve(cfg.kb).exists():
        raise FileNotFoundError(f"KB store {cfg.resolve(cfg.kb)} not found: create it with `wenzhi kg import`")

    def index_corpora():
        indexes = []
        for spec, path in tqdm(list(zip(cfg.corpora, paths)), desc="index corpora", unit="corpus",
                               disable=not show_progress, file=sys.stderr):
            indexes.append(index_corpus(spec, path))
        return indexes

    job, resumed = open_staging(cfg, paths, resume, index_corpora)
    plans = plan_partitions([ix.total for ix in job.indexes], cfg.partition_items)
    pending = [p for p in plans if not finished(job, p)]
    results = []
    with tqdm(total=job.grand_total, initial=sum(p.stop - p.start for p in plans if p not in pending),
              desc="prepare", unit="item", disable=not show_progress, file=sys.stderr) as bar:
        def done(result: dict) -> None:
            results.append(result)
            part = result["partition"]
            bar.update(part["stop"] - part["start"])

        if not pending:
            pass  # everything was finished by an earlier run: merge only
        elif engine == "dask":
            from wenzhi.model.prepare_dask import run_on_dask

            run_on_dask(job, pending, workers, scheduler, done)
        elif workers == 1:
            try:
                for plan in pending:
                    done(run_partition(job, plan, retriever))
            finally:
                release()
        else:
            _run_in_processes(job, pending, workers, done)
    meta = merge(job, plans, curriculum)
    elapsed, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
    chars = meta["stats"]["prepare"]["chars"]
    meta["run"] = {"engine": engine, "workers": workers, "partitions": len(plans), "resumed_partitions": len(plans) - len(pending),
                   "seconds": round(elapsed, 2), "cpu_seconds": round(cpu, 2),
                   "chars_per_second": round(chars / elapsed, 1) if elapsed else 0.0,
                   "chars_per_cpu_second": round(chars / cpu, 1) if cpu and not resumed else None,
                   "stage_cpu_seconds": stage_seconds(results)}
    return meta


def _run_in_processes(job, plans, workers: int, done) -> None:
    # fork: workers start at once with the libraries already imported here (no threads have
    # started yet); each opens its own KB store and loads its own linker on its first partition
    # (prepare_job.resources: a SQLite connection must not cross a fork)
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    if method == "fork":
        preload()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))
    try:
        futures = [pool.submit(run_partition, job, plan) for plan in plans]
        for future in as_completed(futures):
            done(future.result())
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (the workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from wenzhi.cli_conventions import add_config, add_kb, add_output

    add_config(parser, "prepare config: JSON or YAML, or a shipped one by name (see model/configs/prepare_tiny.yaml)",
               "seq_len=256 or corpora.0.limit=1000")
    add_output(parser, "the shard folder to write; shorthand for --set output=PATH (default: the config's output)",
               required=False)
    add_kb(parser, required=False, help="the KB store for entity masking and UKTP; shorthand for --set kb=DB "
                                        "(default: the config's kb)")
    parser.add_argument("--seed", type=int, help="shorthand for --set seed=N (default: the config's seed)")
    parser.add_argument("--partition-items", type=int,
                        help="shorthand for --set partition_items=N (default: the config's partition_items)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes (local engine) or local Dask workers; the output does not depend on it")
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: this machine's processes; dask: a Dask cluster (pip install 'wenzhi[distributed]')")
    parser.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://HOST:8786); "
                        "without it --engine dask starts a local cluster of --workers processes")
    parser.add_argument("--no-resume", action="store_true", help="start over instead of keeping an interrupted run's partitions")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_search_arguments(parser, what="BM25 passage index for retrieval augmentation (default: the config's "
                         "retrieval_index, else $WENZHI_SEARCH); workers read credentials from the environment")


# the shorthand flags: each sets one config field, through --set's path (and its checks)
_SHORTHANDS = {"output": "output", "kb": "kb", "seed": "seed", "partition_items": "partition_items"}


def main(args: argparse.Namespace) -> int:
    # values JSON-quoted: YAML would read a path like `no` or `1e3` as a boolean or a number
    overrides = list(args.set) + [f"{field}={json.dumps(getattr(args, flag))}" for flag, field in _SHORTHANDS.items()
                                  if getattr(args, flag) is not None]
    try:
        cfg = load_config(args.config, overrides)
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    try:
        # the flag, else the config's key, else WENZHI_SEARCH; what the config keeps (and the
        # workers get) is the public form: credentials go to the environment
        search = search_from_args(args, args.search or cfg.retrieval_index)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if search is not None and (args.search or search.is_cluster or not cfg.retrieval_index):
        cfg.retrieval_index = search.public
    try:
        meta = prepare(cfg, show_progress=not args.no_progress, workers=args.workers, engine=args.engine,
                       scheduler=args.scheduler, resume=not args.no_resume)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if Path(cfg.output).with_name(Path(cfg.output).name + ".partial").exists():
            print("the partitions finished so far are kept: the same command resumes", file=sys.stderr)
        return 2
    stats, run = meta["stats"]["prepare"], meta["run"]
    summary = {"output": cfg.output, "rows": meta["num_sequences"], "seq_len": meta["seq_len"],
               "documents": stats["documents"], "examples": stats["examples"], "tokens": stats["tokens"],
               "masked_tokens": stats["masked_tokens"], "examples_per_strategy": stats["examples_per_strategy"],
               "examples_per_kind": stats["examples_per_kind"],
               "masked_tokens_per_unit": stats["masked_tokens_per_unit"],
               "augmentation_hit_rate": stats.get("augmentation", {}).get("hit_rate"),
               "padding_fraction": meta["stats"]["padding_fraction"], "chars": stats["chars"], **run}
    print(json.dumps(summary, ensure_ascii=False))
    return 0


"""`wenzhi finetune ner|sim|gen`, `wenzhi fit-fusion`, `wenzhi evaluate`, `wenzhi serve`: the KBQA
service's commands (conventions: wenzhi/cli_conventions.py)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from wenzhi.cli_conventions import (NLPCC_HOLDOUT, add_config, add_field, add_kb, add_nlpcc_holdout, add_option,
                                    add_output, dataclass_defaults, given_fields)
from wenzhi.retrieval.bm25 import add_search_arguments


# `wenzhi fit-fusion`'s question sample: KgCLUE train holds 18,000 questions; skipping the first
# 17,000 fits on its tail, training questions (dev, which is reported, is never fitted on) that a
# quick `finetune --limit` run reads last; all 1,000 of them: weights fitted on 500 moved with which
# 500 (and did worse on another 1,000 train questions: 1,956-1,968 right of 2,000 against 1,972;
# bench/RESULTS.md, h12d), and the fit stays a few minutes on CPU.
FUSION_SKIP, FUSION_LIMIT = 17_000, 1_000


def register(sub: "argparse._SubParsersAction") -> None:
    """Add this package's sub-commands to the `wenzhi` parser."""
    from wenzhi.qa_service.finetune import TASKS, FinetuneConfig

    defaults = dataclass_defaults(FinetuneConfig)
    ft = sub.add_parser("finetune", help="fine-tune the NER, SIM (relation) or GEN (KB-constrained) head")
    ft.add_argument("task", choices=TASKS, help="the head to fine-tune")
    add_kb(ft)
    add_output(ft, "the QA model folder; the head goes to DIR/<task>", old=["--out"], dest="out", metavar="DIR")
    add_config(ft, "fine-tuning config (FinetuneConfig's fields, qa_service/finetune/config.py): JSON or YAML; "
               "the flags below override it", "lr=1e-3 or negatives=30", required=False, metavar="FILE")
    add_field(ft, "--init", defaults, metavar="DIR", help="`wenzhi pretrain` checkpoint (none: a fresh --size model)")
    add_field(ft, "--size", defaults, choices=["tiny", "small"], help="fresh model size when --init is not given")
    add_field(ft, "--questions", defaults, nargs="+", metavar="FILE",
              help="KBQA JSON lines (none: kgclue/train.json and nlpcc2016/train.json of the data dir)")
    add_field(ft, NLPCC_HOLDOUT, defaults, "holdout_nlpcc", old=["--holdout-nlpcc"], type=float, metavar="FRACTION",
              help="share of NLPCC questions never trained on (scored by `wenzhi evaluate --nlpcc-holdout`)")
    add_field(ft, "--limit", defaults, type=int, help="train on the first N (shuffled) questions (none: all)")
    add_field(ft, "--epochs", defaults, type=float, help="passes over the questions (--max-steps caps them)")
    add_field(ft, "--max-steps", defaults, type=int, help="optimizer steps at most (none: as --epochs make)")
    add_field(ft, "--batch-size", defaults, type=int, help="questions per optimizer step")
    add_field(ft, "--lr", defaults, type=float, help="peak learning rate (linear warm-up, then decay)")
    add_field(ft, "--negatives", defaults, type=int,
              help="SIM negatives per question (drawn as evaluation draws candidates, see qa_service/data.py)")
    add_field(ft, "--sim-loss", defaults, choices=["listwise", "pointwise"],
              help="SIM only: softmax cross-entropy over each question's candidates, or BCE per pair")
    add_field(ft, "--interaction", defaults, choices=["match", "late", "full"],
              help="SIM only: match = token-level late interaction (each relation token's best match "
                   "in the question, model/relation_matching.py); a pair head whose relations meet the "
                   "question in the NLU layers (late) or in every layer (full). match and late relation "
                   "states are computed once per name and cached by the service")
    add_field(ft, "--no-relation-prior", defaults, "relation_prior", action="store_const", const=False,
              help="SIM (match) only: no learned relation prior (how often each relation is asked when offered, "
                   "counted on the training questions, qa_service/relation_prior.py)")
    add_field(ft, "--nlu-layers", defaults, type=int, metavar="N",
              help="NLU layers of the head (none: the checkpoint's; layers beyond it start fresh)")
    add_field(ft, "--no-copy", defaults, "copy_source", action="store_const", const=False,
              help="GEN only: no pointer over the question's tokens mixed into the next-token distribution")
    add_field(ft, "--target-layout", defaults, choices=["relation-first", "head-relation"],
              help="GEN only: relation-first = `base [unused1] relation [unused2] disambiguation [SEP]`, "
                   "head-relation = `head [unused1] relation [SEP]` (qa_service/trie.py)")
    add_field(ft, "--unfreeze", defaults, "freeze_universal", action="store_const", const=False,
              help="train the universal module too (heads then no longer share one pass)")
    add_field(ft, "--threads", defaults, type=int, help="torch threads (none: torch's choice)")
    add_field(ft, "--seed", defaults, type=int, help="seed of the question order, negatives and initialisation")
    add_field(ft, "--mixed-precision", defaults, choices=["auto", "no", "bf16", "fp16"],
              help="accelerate's autocast: auto = bf16 on CUDA, none on CPU")
    add_field(ft, "--bf16", defaults, "mixed_precision", action="store_const", const="bf16",
              help="shorthand for --mixed-precision bf16 (CPU too)")
    add_field(ft, "--checkpoint-every", defaults, type=int, metavar="STEPS",
              help="a checkpoint in DIR/training/<task>/ every STEPS optimizer steps (0: none); a killed run "
                   "resumes from the newest intact one when run again with the same settings")
    ft.add_argument("--no-resume", action="store_true",
                    help="start afresh; refused where an interrupted run's checkpoints are, unless --overwrite")
    ft.add_argument("--overwrite", action="store_true", help="with --no-resume: delete the interrupted run's checkpoints first")
    ft.add_argument("--no-progress", action="store_true", help="no progress bar")
    ft.set_defaults(handler=_finetune)

    ff = sub.add_parser("fit-fusion", help="fit the pipeline's fusion weights (heads fixed) on training questions; "
                                           "they are written into the model folder")
    add_kb(ff)
    add_option(ff, "--model", old=["--out"], required=True, metavar="DIR",
               help="the QA model folder (from `wenzhi finetune`) whose fusion weights are fitted and saved")
    ff.add_argument("--questions", metavar="FILE", help="KBQA JSON lines (none: kgclue/train.json of the data dir)")
    ff.add_argument("--skip", type=int, default=FUSION_SKIP,
                    help="questions skipped at the start of the file: KgCLUE train's 18,000 less its tail")
    ff.add_argument("--limit", type=int, default=FUSION_LIMIT,
                    help="questions fitted on: a few thousand candidate triples for seven weights")
    ff.add_argument("--no-gen", action="store_true", help="leave the GEN head out")
    ff.add_argument("--distractor-relations", type=_counts, default=[0], metavar="K[,K...]",
                    help="fit the weights over these settings of `wenzhi evaluate --distractor-relations` "
                         "together (each question once per setting)")
    ff.add_argument("--threads", type=int, help="torch threads (none: torch's choice)")
    ff.add_argument("--save-evidence", metavar="FILE.npz",
                    help="also write every candidate's evidence (numbers only) for a later --evidence")
    ff.add_argument("--evidence", metavar="FILE.npz",
                    help="choose the weights from evidence saved by --save-evidence (the heads are not run)")
    ff.set_defaults(handler=_fit_fusion)

    ev = sub.add_parser("evaluate", help="KgCLUE metric (EM/F1 on S, P, O, All; Score) on KBQA questions")
    ev.add_argument("--questions", required=True, metavar="FILE", help="KBQA JSON lines (KgCLUE or NLPCC)")
    add_kb(ev)
    ev.add_argument("--model", required=True, metavar="DIR", help="the QA model folder (from `wenzhi finetune`)")
    ev.add_argument("--limit", type=int, help="score the first N questions (none: all)")
    add_nlpcc_holdout(ev, help="score only the held-out share of an NLPCC file (as `finetune --nlpcc-holdout`)")
    ev.add_argument("--errors", metavar="FILE", help="write wrong answers as JSON lines")
    add_search_arguments(ev, "--index", what="BM25 entity index (fuzzy fallback)")
    ev.add_argument("--no-gen", action="store_true", help="leave the GEN head out (as --mode pipeline)")
    ev.add_argument("--mode", type=_modes, default=["fused"], metavar="MODE[,MODE...]",
                    help="answering path scored: fused (both), pipeline (linker + NER + SIM alone) or gen "
                         "(GEN alone); several, comma-separated, are scored with one loaded model, one JSON line each")
    ev.add_argument("--distractor-relations", type=_counts, default=[0], metavar="K[,K...]",
                    help="every entity also offers the KB's K most frequent relations with unknown tails "
                         "(choosing one scores as wrong), for both paths: the relation decides; several: "
                         "each with every --mode")
    ev.add_argument("--batch-size", type=int, default=16, help="questions answered in one pass")
    ev.add_argument("--threads", type=int, help="torch threads (none: torch's choice)")
    ev.set_defaults(handler=_evaluate)

    _register_serve(sub)


def _register_serve(sub) -> None:
    from wenzhi.qa_service.settings import ServiceSettings

    defaults = dataclass_defaults(ServiceSettings)
    sv = sub.add_parser("serve", help="the KBQA REST service (FastAPI)")
    sv.add_argument("--model", required=True, metavar="DIR", help="model directory (from `wenzhi finetune`)")
    add_kb(sv)
    add_search_arguments(sv, "--index", what="BM25 entity index (fuzzy fallback)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on")
    sv.add_argument("--trusted-hosts", metavar="NAMES",
                    help="comma-separated Host header values answered (others get a 400: no DNS rebinding); "
                         "'*' for any; default: --host, localhost, 127.0.0.1, [::1]")
    sv.add_argument("--no-gen", action="store_true", help="leave the GEN head out (lower latency)")
    sv.add_argument("--timeout", type=float, default=defaults["timeout_s"], help="seconds to answer a question")
    sv.add_argument("--max-batch", type=int, default=defaults["max_batch"],
                    help="questions answered at once at most (with --workers N, N passes of max-batch/N)")
    sv.add_argument("--max-wait-ms", type=float, default=defaults["max_wait_ms"],
                    help="how long a batch waits for company (0: batch what queued while the pipeline was busy)")
    sv.add_argument("--threads", type=int, default=1,  # not ServiceSettings' None (torch's choice): see the help
                    help="torch threads of the pipeline (1: the event loop keeps the other core)")
    sv.add_argument("--workers", type=int, default=defaults["workers"], metavar="N",
                    help="worker processes answering batches side by side, each with its own copy of the pipeline "
                         "(about 0.6 GB each for the demo's model): more throughput where cores are free (on 2 cores, "
                         "2 workers answered 1.26x the questions per second of 1, at 1.15x the CPU per question: "
                         "bench/RESULTS.md)")
    sv.add_argument("--in-process", action="store_true",
                    help="run the pipeline in the service's process instead of a worker process of its own")
    sv.add_argument("--restart-attempts", type=int, default=defaults["restart_attempts"],
                    help="failed loads of the pipeline in a row (a worker killed while loading counts) before "
                         "giving up: /healthz then fails and the command exits with status 3")
    sv.add_argument("--restart-backoff", type=float, default=defaults["restart_backoff_s"], metavar="SECONDS",
                    help=f"wait before the second load attempt, doubled for each next one (at most "
                         f"{defaults['restart_backoff_max_s']:g} s)")
    sv.add_argument("--max-body-bytes", type=int, default=defaults["max_body_bytes"],
                    help="larger request bodies get a 413 (the largest valid request is about 12 KB)")
    sv.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                    help="a request's line and headers must arrive within this (else 408, connection closed)")
    sv.add_argument("--body-timeout", type=float, default=defaults["body_timeout_s"], metavar="SECONDS",
                    help="a request's body must arrive within this once its headers are in (else 408)")
    sv.add_argument("--keep-alive-timeout", type=float, default=5.0, metavar="SECONDS",
                    help="an idle connection is closed after this")
    sv.add_argument("--shutdown-timeout", type=float, default=5.0, metavar="SECONDS",
                    help="on SIGTERM/Ctrl-C, requests still running after this are cancelled")
    sv.set_defaults(handler=_serve)


def finetune_config(args: argparse.Namespace):
    """The FinetuneConfig a `wenzhi finetune` command line means: the dataclass's defaults, then
    --config's file, then --set, then the flags given."""
    from wenzhi.kg.datadir import data_path
    from wenzhi.model.config_files import config_fields

    from wenzhi.qa_service.finetune import FinetuneConfig

    raw = config_fields(FinetuneConfig, args.config, args.set, given_fields(args, FinetuneConfig))
    raw["questions"] = [Path(q) for q in raw.get("questions") or [data_path("kgclue/train.json"),
                                                                   data_path("nlpcc2016/train.json")]]
    for key in ("out", "kb", "init"):
        raw[key] = Path(raw[key]) if raw.get(key) else None
    return FinetuneConfig(**raw)


def _finetune(args) -> int:
    from wenzhi.model.checkpoint import CheckpointError
    from wenzhi.model.distributed import LaunchError
    from wenzhi.model.pretrained import InitError
    from wenzhi.model.training_loop import OutputDirInUse

    from wenzhi.qa_service.finetune import finetune

    try:
        cfg = finetune_config(args)
    except (OSError, ValueError, TypeError) as exc:
        print(f"wenzhi finetune: {exc}", file=sys.stderr)
        return 2
    if args.overwrite and not args.no_resume:
        print("wenzhi finetune: --overwrite only goes with --no-resume (a resumed run keeps its checkpoints)",
              file=sys.stderr)
        return 2
    try:
        report = finetune(cfg, resume=not args.no_resume, overwrite=args.overwrite, show_progress=not args.no_progress)
    except (OutputDirInUse, LaunchError, CheckpointError, InitError, ValueError) as exc:  # ValueError: no questions, ...
        print(f"wenzhi finetune: {exc}", file=sys.stderr)
        return 2
    report.pop("config", None)
    if os.environ.get("RANK", "0") == "0":  # one report for a multi-process run
        print(json.dumps(report, ensure_ascii=False))
    return 0


def _fit_fusion(args) -> int:
    from wenzhi.kg.datadir import data_path

    from wenzhi.qa_service.fusion import fit_fusion

    report = fit_fusion(args.model, args.kb, args.questions or data_path("kgclue/train.json"), limit=args.limit,
                        skip=args.skip, use_gen=not args.no_gen, threads=args.threads,
                        distractor_relations=tuple(args.distractor_relations), evidence_out=args.save_evidence,
                        evidence_in=args.evidence)
    print(json.dumps(report, ensure_ascii=False))
    return 0


def _modes(value: str) -> list[str]:
    modes = [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("fused", "pipeline", "gen")]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"modes are fused, pipeline, gen (comma-separated), not {value!r}")
    return modes


def _counts(value: str) -> list[int]:
    try:
        counts = [int(k) for k in value.split(",") if k.strip()]
    except ValueError:
        counts = []
    if not counts or any(k < 0 for k in counts):
        raise argparse.ArgumentTypeError(f"expected counts >= 0 (comma-separated), not {value!r}")
    return counts


def _evaluate(args) -> int:
    from wenzhi.qa_service.evaluate import evaluate_runs

    if args.no_gen and any(m == "gen" for m in args.mode):
        print("wenzhi evaluate: --mode gen needs the GEN head (drop --no-gen)", file=sys.stderr)
        return 2
    index, error = _bm25_index(args)
    if error:
        print(f"wenzhi evaluate: {error}", file=sys.stderr)
        return 2
    runs = [(mode, k) for k in args.distractor_relations for mode in args.mode]
    for result in evaluate_runs(args.questions, args.kb, args.model, limit=args.limit, errors=args.errors,
                                index=index, use_gen=not args.no_gen, batch_size=args.batch_size,
                                threads=args.threads, nlpcc_holdout=args.nlpcc_holdout, runs=runs):
        print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0


def _bm25_index(args) -> tuple[str | None, str | None]:
    """(the fuzzy fallback's BM25 index in its public form, None), the index checked now; or
    (None, why it cannot be opened). The worker process reads credentials from the environment."""
    from wenzhi.retrieval.search_cluster import SearchClusterError
    from wenzhi.retrieval.bm25 import open_bm25, search_from_args

    try:
        setting = search_from_args(args)
        if setting is not None:
            open_bm25(setting)
    except (ValueError, FileNotFoundError, SearchClusterError) as exc:
        return None, str(exc)
    return (setting.public if setting is not None else None), None


def _trusted_hosts(value: str | None, bound: str) -> tuple[str, ...]:
    if value:
        return tuple(h.strip() for h in value.split(",") if h.strip())
    bound = f"[{bound}]" if ":" in bound and not bound.startswith("[") else bound  # IPv6, as in a Host header
    return tuple(dict.fromkeys((bound, "localhost", "127.0.0.1", "[::1]")))


def _serve(args) -> int:
    import uvicorn

    from wenzhi.qa_service.http_limits import header_deadline_protocol
    from wenzhi.qa_service.service import ServiceSettings, create_app

    for path in (Path(args.model), Path(args.kb)):
        if not path.exists():
            print(f"wenzhi serve: {path} does not exist", file=sys.stderr)
            return 2
    hosts = _trusted_hosts(args.trusted_hosts, args.host)
    if args.host in ("0.0.0.0", "::") and not args.trusted_hosts:
        print(f"wenzhi serve: listening on all interfaces, but only Host headers {', '.join(hosts)} are answered; "
              "pass --trusted-hosts with the names clients use", file=sys.stderr)
    if args.workers < 1 or (args.in_process and args.workers > 1):
        print(f"wenzhi serve: --workers {args.workers}: give at least 1, and only 1 with --in-process", file=sys.stderr)
        return 2
    index, error = _bm25_index(args)
    if error:
        print(f"wenzhi serve: {error}", file=sys.stderr)
        return 2
    settings = ServiceSettings(model=args.model, kb=args.kb, index=index, use_gen=not args.no_gen,
                               timeout_s=args.timeout, max_batch=args.max_batch,
                               max_wait_ms=args.max_wait_ms, threads=args.threads,
                               manage_gc=True, worker_process=not args.in_process, workers=args.workers,
                               restart_attempts=args.restart_attempts, restart_backoff_s=args.restart_backoff,
                               trusted_hosts=hosts, max_body_bytes=args.max_body_bytes,
                               body_timeout_s=args.body_timeout)
    server: uvicorn.Server | None = None

    def gave_up() -> None:  # from the supervisor thread; the server polls the flag
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_gave_up=gave_up)
    server = uvicorn.Server(uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", access_log=False,
        http=header_deadline_protocol(args.header_timeout), timeout_keep_alive=args.keep_alive_timeout,
        timeout_graceful_shutdown=args.shutdown_timeout))
    server.run()
    state = app.state.qa
    if state.status == "failed":
        print(f"wenzhi serve: {state.error}", file=sys.stderr)
        return 3
    return 0

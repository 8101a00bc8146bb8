"""`wenzhi finetune ner|sim|gen`, `wenzhi evaluate`, `wenzhi serve`: the KBQA service's commands."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wenzhi.kg.cli import DefaultsHelpFormatter
from wenzhi.retrieval.bm25 import add_search_arguments


def register(sub: "argparse._SubParsersAction") -> None:
    """Add this package's sub-commands to the `wenzhi` parser."""
    ft = sub.add_parser("finetune", help="fine-tune the NER, SIM (relation) or GEN (KB-constrained) head")
    ft.add_argument("task", choices=["ner", "sim", "gen", "fusion"],
                    help="a head, or `fusion`: fit the pipeline's fusion weights on training questions")
    ft.add_argument("--kb", required=True, metavar="DB", help="triple store (from `wenzhi kg import`)")
    ft.add_argument("--out", required=True, metavar="DIR", help="model directory; the head goes to DIR/<task>")
    ft.add_argument("--init", metavar="DIR", help="`wenzhi pretrain` checkpoint (default: a fresh tiny model)")
    ft.add_argument("--size", choices=["tiny", "small"], default="tiny",
                    help="fresh model size when --init is not given")
    ft.add_argument("--questions", nargs="+", metavar="FILE",
                    help="KBQA JSON lines (default: kgclue/train.json and nlpcc2016/train.json of the data dir)")
    ft.add_argument("--holdout-nlpcc", type=float, default=0.2,
                    help="share of NLPCC questions never trained on (evaluated by `wenzhi evaluate --nlpcc-holdout`)")
    ft.add_argument("--limit", type=int, help="train on the first N (shuffled) questions (fusion: default 500)")
    ft.add_argument("--skip", type=int, default=17_000,
                    help="fusion only: questions skipped at the start of the file (default: all but KgCLUE train's tail)")
    ft.add_argument("--no-gen", action="store_true", help="fusion only: leave the GEN head out")
    ft.add_argument("--epochs", type=float, default=1.0)
    ft.add_argument("--max-steps", type=int)
    ft.add_argument("--batch-size", type=int, default=32)
    ft.add_argument("--lr", type=float, default=5e-4)
    ft.add_argument("--negatives", type=int, default=5, help="SIM negatives per question")
    ft.add_argument("--interaction", choices=["late", "full"], default="late",
                    help="SIM only: relations meet the question in the NLU layers (late: relation states are "
                         "computed once per name and cached by the service) or in every layer (full)")
    ft.add_argument("--unfreeze", action="store_true",
                    help="train the universal module too (heads then no longer share one pass)")
    ft.add_argument("--threads", type=int, help="torch threads")
    ft.add_argument("--seed", type=int, default=0)
    ft.set_defaults(handler=_finetune)

    ev = sub.add_parser("evaluate", help="KgCLUE metric (EM/F1 on S, P, O, All; Score) on KBQA questions")
    ev.add_argument("--questions", required=True, metavar="FILE")
    ev.add_argument("--kb", required=True, metavar="DB")
    ev.add_argument("--model", required=True, metavar="DIR")
    ev.add_argument("--limit", type=int)
    ev.add_argument("--nlpcc-holdout", type=float, metavar="FRACTION",
                    help="score only the held-out share of an NLPCC file (as `finetune --holdout-nlpcc`)")
    ev.add_argument("--errors", metavar="FILE", help="write wrong answers as JSON lines")
    add_search_arguments(ev, "--index", what="BM25 entity index (fuzzy fallback)")
    ev.add_argument("--no-gen", action="store_true", help="leave the GEN head out")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--threads", type=int)
    ev.add_argument("--relation-selection", action="store_true", default=True, help=argparse.SUPPRESS)
    ev.set_defaults(handler=_evaluate)

    sv = sub.add_parser("serve", help="the KBQA REST service (FastAPI)",
                        formatter_class=DefaultsHelpFormatter)
    sv.add_argument("--model", required=True, metavar="DIR", help="model directory (from `wenzhi finetune`)")
    sv.add_argument("--kb", required=True, metavar="DB", help="triple store (from `wenzhi kg import`)")
    add_search_arguments(sv, "--index", what="BM25 entity index (fuzzy fallback)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on")
    sv.add_argument("--trusted-hosts", metavar="NAMES",
                    help="comma-separated Host header values answered (others get a 400: no DNS rebinding); "
                         "'*' for any; default: --host, localhost, 127.0.0.1, [::1]")
    sv.add_argument("--no-gen", action="store_true", help="leave the GEN head out (lower latency)")
    sv.add_argument("--timeout", type=float, default=10.0, help="seconds to answer a question")
    sv.add_argument("--max-batch", type=int, default=32, help="questions answered in one pass at most")
    sv.add_argument("--max-wait-ms", type=float, default=0.0,
                    help="how long a batch waits for company (0: batch what queued while the pipeline was busy)")
    sv.add_argument("--threads", type=int, default=1,
                    help="torch threads of the pipeline (1: the event loop keeps the other core)")
    sv.add_argument("--in-process", action="store_true",
                    help="run the pipeline in the service's process instead of a worker process of its own")
    sv.add_argument("--restart-attempts", type=int, default=5,
                    help="failed loads of the pipeline in a row (a worker killed while loading counts) before "
                         "giving up: /healthz then fails and the command exits with status 3")
    sv.add_argument("--restart-backoff", type=float, default=1.0, metavar="SECONDS",
                    help="wait before the second load attempt, doubled for each next one (at most 16 s)")
    sv.add_argument("--max-body-bytes", type=int, default=64 * 1024,
                    help="larger request bodies get a 413 (the largest valid request is about 12 KB)")
    sv.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                    help="a request's line and headers must arrive within this (else 408, connection closed)")
    sv.add_argument("--body-timeout", type=float, default=10.0, metavar="SECONDS",
                    help="a request's body must arrive within this once its headers are in (else 408)")
    sv.add_argument("--keep-alive-timeout", type=float, default=5.0, metavar="SECONDS",
                    help="an idle connection is closed after this")
    sv.add_argument("--shutdown-timeout", type=float, default=5.0, metavar="SECONDS",
                    help="on SIGTERM/Ctrl-C, requests still running after this are cancelled")
    sv.set_defaults(handler=_serve)


def _finetune(args) -> int:
    from wenzhi.kg.datadir import data_path

    from wenzhi.qa_service.finetune import FinetuneConfig, finetune

    if args.task == "fusion":
        from wenzhi.qa_service.fusion import fit_fusion

        questions = args.questions[0] if args.questions else data_path("kgclue/train.json")
        report = fit_fusion(args.out, args.kb, questions, limit=args.limit or 500, skip=args.skip,
                            use_gen=not args.no_gen, threads=args.threads)
        print(json.dumps(report, ensure_ascii=False))
        return 0
    questions = [Path(q) for q in args.questions] if args.questions else [
        data_path("kgclue/train.json"), data_path("nlpcc2016/train.json")]
    cfg = FinetuneConfig(task=args.task, out=Path(args.out), kb=Path(args.kb), questions=questions,
                         init=Path(args.init) if args.init else None, holdout_nlpcc=args.holdout_nlpcc,
                         limit=args.limit, epochs=args.epochs, max_steps=args.max_steps,
                         batch_size=args.batch_size, lr=args.lr, negatives=args.negatives,
                         freeze_universal=not args.unfreeze, size=args.size, seed=args.seed, threads=args.threads,
                         interaction=args.interaction)
    report = finetune(cfg)
    report.pop("config", None)
    print(json.dumps(report, ensure_ascii=False))
    return 0


def _evaluate(args) -> int:
    from wenzhi.qa_service.evaluate import evaluate

    index, error = _bm25_index(args)
    if error:
        print(f"wenzhi evaluate: {error}", file=sys.stderr)
        return 2
    result = evaluate(args.questions, args.kb, args.model, limit=args.limit, errors=args.errors,
                      index=index, use_gen=not args.no_gen, batch_size=args.batch_size,
                      threads=args.threads, nlpcc_holdout=args.nlpcc_holdout)
    print(json.dumps(result, ensure_ascii=False))
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
    index, error = _bm25_index(args)
    if error:
        print(f"wenzhi serve: {error}", file=sys.stderr)
        return 2
    settings = ServiceSettings(model=args.model, kb=args.kb, index=index, use_gen=not args.no_gen,
                               timeout_s=args.timeout, max_batch=args.max_batch,
                               max_wait_ms=args.max_wait_ms, threads=args.threads,
                               manage_gc=True, worker_process=not args.in_process,
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

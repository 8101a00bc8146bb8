"""The last step of `make demo`: start `wenzhi serve`, ask a question over HTTP, print the answer.

    python -m wenzhi.qa_service.demo --model runs/demo/qa --kb runs/demo/kb.sqlite [--question TEXT]
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time

from wenzhi.cli_conventions import add_option


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="DIR", help="the QA model folder (from `wenzhi finetune`)")
    p.add_argument("--kb", required=True, metavar="DB", help="the KB store (from `wenzhi kg import`)")
    add_option(p, "--search", old=["--index"], metavar="DIR_OR_URL", help="BM25 entity index (fuzzy fallback)")
    p.add_argument("--question", action="append",
                   help="question(s) to ask (default: two KgCLUE dev questions)")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for readiness")
    args = p.parse_args(argv)
    import httpx

    questions = args.question or ["我很好奇龙编站的坐标是什么啊？", "刘晓华主要讲什么课啊？"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "wenzhi", "serve", "--model", args.model, "--kb", args.kb,
           "--host", "127.0.0.1", "--port", str(port)]
    if args.search:
        cmd += ["--search", args.search]
    server = subprocess.Popen(cmd)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            if server.poll() is not None:
                print(f"demo: the server exited with {server.returncode}", file=sys.stderr)
                return 1
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() - t0 > args.timeout:
                print("demo: the server did not become ready in time", file=sys.stderr)
                return 1
            time.sleep(0.5)
        print(f"demo: service ready on {base} after {time.time() - t0:.1f} s")
        for question in questions:
            r = httpx.post(f"{base}/v1/qa", json={"question": question, "top_k": 3}, timeout=60)
            body = r.json()
            print(f"POST /v1/qa {question!r} -> HTTP {r.status_code}")
            print(json.dumps({"answer": body.get("answer"), "latency_ms": body.get("latency_ms")},
                             ensure_ascii=False, indent=1))
            if r.status_code != 200:
                return 1
        r = httpx.post(f"{base}/v1/qa", json={"question": "   "}, timeout=10)
        print(f"POST /v1/qa with a blank question -> HTTP {r.status_code}: {r.json()['detail']}")
        return 0
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    sys.exit(main())

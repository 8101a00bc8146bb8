"""Schemathesis against the KBQA service's own OpenAPI schema, on a live `wenzhi serve`.

    .venv/bin/python bench/schemathesis_run.py --model runs/demo/qa --kb runs/demo/kb.sqlite

Starts the server, waits for /readyz, runs `schemathesis run` (examples, coverage and fuzzing
phases, positive and negative data) with the checks below, and reports the number of generated
cases and of server errors (goal: none). Last line: a JSON object.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--kb", required=True)
    p.add_argument("--max-examples", type=int, default=200, help="per operation and phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checks", default=CHECKS)
    args = p.parse_args()
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "wenzhi", "serve", "--model", args.model,
                               "--kb", args.kb, "--port", str(port), "--no-gen", "--threads", "1"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open("/tmp/schemathesis-serve.log", "w"))
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        report = Path(tempfile.mkdtemp(prefix="schemathesis-")) / "events.ndjson"
        cmd = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{base}/openapi.json",
               "--checks", args.checks, "--max-examples", str(args.max_examples), "--seed", str(args.seed),
               "--workers", "1", "--request-timeout", "30", "--report", "ndjson",
               "--report-ndjson-path", str(report), "--generation-allow-x00", "true"]
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=report.parent, capture_output=True, text=True)  # its caches stay out of the repo
        wall = time.time() - t0
        print(proc.stdout[-4000:])
        cases = server_errors = failures = 0
        statuses: dict[str, int] = {}
        for line in report.read_text().splitlines():
            event = json.loads(line)
            for name, body in event.items():
                if name != "ScenarioFinished":
                    continue
                for case in (body.get("recorder") or {}).get("cases", {}).values():
                    cases += 1
                for interaction in (body.get("recorder") or {}).get("interactions", {}).values():
                    status = (interaction.get("response") or {}).get("status_code")
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    if status is not None and status >= 500:
                        server_errors += 1
                for checks in (body.get("recorder") or {}).get("checks", {}).values():
                    failures += sum(1 for c in checks if str(c.get("status", "")).lower() == "failure")
        result = {"generated_cases": cases, "responses_by_status": dict(sorted(statuses.items())),
                  "server_errors": server_errors, "check_failures": failures, "checks": args.checks,
                  "schemathesis_exit_code": proc.returncode, "wall_s": round(wall, 1)}
        print(json.dumps(result))
        return 0 if server_errors == 0 else 1
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    sys.exit(main())

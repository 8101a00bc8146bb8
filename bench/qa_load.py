"""Load benchmark of the KBQA service: a live `wenzhi serve` on 127.0.0.1 driven by concurrent clients.

    .venv/bin/python bench/qa_load.py --model runs/demo/qa --kb runs/demo/kb.sqlite

Starts the server as a subprocess (as the model folder asks to be served: with its GEN head where
pipeline.json's fusion weights weigh it; `--no-gen` leaves it out), waits for /readyz, warms up,
then for 1, 8 and 32 concurrent clients posts real KgCLUE dev questions to /v1/qa and reports
p50/p99 latency, throughput and errors (closed-loop clients over keep-alive connections, a light
hand-written HTTP/1.1 client in this process). The 32-client level runs `--requests` (10,000)
requests with the server's RSS read from /proc before, after and every 1,000 requests (also per
process: HTTP side, QA worker). With `--compare-unbatched` it repeats the 32-client level against a
second server started with `--max-batch 1` (micro-batching off) and reports the ratio;
`--compare-workers A,B` runs only the top level, interleaved in chunks of 1,000 requests, on servers
with A and with B QA worker processes (`wenzhi serve --workers`), and reports A's throughput over B's.
Last line: a JSON object with p99_ms_at_32, errors and rss_growth_mb.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when loaded from its path
from machine_facts import machine_facts  # noqa: E402  (bench/)

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """The server and its descendants (`wenzhi serve` answers in a worker process of its own)."""
    pids, i = [pid], 0
    while i < len(pids):
        try:
            for task in os.listdir(f"/proc/{pids[i]}/task"):
                with open(f"/proc/{pids[i]}/task/{task}/children") as fh:
                    pids.extend(int(c) for c in fh.read().split())
        except FileNotFoundError:
            pass
        i += 1
    return pids


def rss_each_mb(pid: int) -> list[float]:
    """Resident memory of the server, then of each of its descendants (the QA worker)."""
    out = []
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                out.append(next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024)
        except (FileNotFoundError, StopIteration):
            pass
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of the server and its worker together."""
    return sum(rss_each_mb(pid))


def steal_jiffies() -> tuple[int, int]:
    """(stolen, total) CPU jiffies of the machine so far: a VM's host taking the CPU shows here."""
    with open("/proc/stat") as fh:
        values = [int(x) for x in fh.readline().split()[1:]]
    return values[7], sum(values[:8])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server and its worker (all their threads), from /proc."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def gen_weighted(model: str) -> bool:
    """Whether the model folder's fusion weights give GEN's evidence any weight (then `wenzhi serve`
    decodes GEN, as `wenzhi evaluate --mode fused` does)."""
    from wenzhi.qa_service.pipeline import PipelineConfig

    config = PipelineConfig.load(Path(model))
    return (Path(model) / "gen" / "config.json").exists() and bool(config.w_gen or config.w_gen_head)


def server_command(args, port: int, extra: list[str]) -> list[str]:
    """`wenzhi serve` as the model folder asks to be served (its GEN head where pipeline.json
    weighs it), unless --no-gen leaves GEN out."""
    cmd = [sys.executable, "-m", "wenzhi", "serve", "--model", args.model, "--kb", args.kb,
           "--host", "127.0.0.1", "--port", str(port), *extra]
    if args.no_gen:
        cmd.append("--no-gen")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.max_batch is not None:
        cmd += ["--max-batch", str(args.max_batch)]
    if args.max_wait_ms is not None:
        cmd += ["--max-wait-ms", str(args.max_wait_ms)]
    if args.workers is not None and "--workers" not in extra and "--in-process" not in extra:
        cmd += ["--workers", str(args.workers)]
    return cmd


def start_server(args, port: int, extra: list[str]) -> subprocess.Popen:
    cmd = server_command(args, port, extra)
    log = open(Path(args.log_dir) / f"serve-{port}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just what this benchmark needs (JSON POST/GET,
    Content-Length bodies). Hand-written because the load generator shares the 2 cores with the
    server it measures: httpx costs ~10 ms of CPU per request here, which the server then lacks;
    this costs a few tens of microseconds."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def request(self, method: str, path: str, payload: dict | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body = json.dumps(payload, ensure_ascii=False).encode() if payload is not None else b""
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        try:
            self.writer.write(head + body)
            header = await self.reader.readuntil(b"\r\n\r\n")
            lines = header.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            length = next((int(l.split(":", 1)[1]) for l in lines if l.lower().startswith("content-length:")), 0)
            data = await self.reader.readexactly(length)
            if any(l.lower() == "connection: close" for l in lines):
                self.close()
            return status, data
        except BaseException:
            self.close()  # a broken or cancelled exchange leaves the stream unusable
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 600) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        conn = Connection("127.0.0.1", port)
        try:
            if (await conn.request("GET", "/readyz"))[0] == 200:
                return time.perf_counter() - t0
        except OSError:  # not listening yet
            pass
        finally:
            conn.close()
        await asyncio.sleep(0.25)
    raise TimeoutError("server not ready")


async def drive(port: int, questions: list[str], n: int, concurrency: int) -> dict:
    """`concurrency` closed-loop clients, each on its own connection, posting until n requests."""
    latencies: list[float] = []
    errors = 0
    error_kinds: dict[str, int] = {}
    counter = iter(range(n))

    async def worker():
        nonlocal errors
        conn = Connection("127.0.0.1", port)
        for i in counter:
            t0 = time.perf_counter()
            try:
                status, body = await conn.request("POST", "/v1/qa", {"question": questions[i % len(questions)], "top_k": 3})
                if status != 200 or b'"answers"' not in body:
                    errors += 1
                    error_kinds[str(status)] = error_kinds.get(str(status), 0) + 1
            except Exception as exc:  # noqa: BLE001 - counted
                errors += 1
                error_kinds[type(exc).__name__] = error_kinds.get(type(exc).__name__, 0) + 1
            latencies.append((time.perf_counter() - t0) * 1e3)
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return {"clients": concurrency, "requests": n, "errors": errors, "p50_ms": round(pick(0.5), 1),
            "p99_ms": round(pick(0.99), 1), "throughput_rps": round(n / wall, 1), "wall_s": round(wall, 1),
            "error_kinds": error_kinds, "_latencies": latencies}


def merge(parts: list[dict]) -> dict:
    """One level's figures from its chunks (percentiles from the chunks' raw latencies)."""
    lat = sorted(x for p in parts for x in p["_latencies"])
    wall = sum(p["wall_s"] for p in parts)
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    kinds: dict[str, int] = {}
    for p in parts:
        for k, v in p["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    return {"clients": parts[0]["clients"], "requests": len(lat), "errors": sum(p["errors"] for p in parts),
            "error_kinds": kinds,
            "p50_ms": round(pick(0.5), 1), "p99_ms": round(pick(0.99), 1),
            "throughput_rps": round(len(lat) / wall, 1), "wall_s": round(wall, 1)}


async def run_levels(args, port: int, questions: list[str], proc, levels: list[int]) -> dict:
    ready_s = await wait_ready(port, proc)
    await drive(port, questions, args.warmup, 8)  # not counted
    out = {"ready_s": round(ready_s, 1), "levels": []}
    cpu0, client_cpu0 = cpu_seconds(proc.pid), time.process_time()
    served = 0
    for c in levels:
        if c == max(levels):  # in chunks of 1,000 so the RSS trajectory shows plateau or leak
            out["rss_before_mb"] = round(rss_mb(proc.pid), 1)
            steal0 = steal_jiffies()
            out["rss_trajectory_mb"] = [out["rss_before_mb"]]
            # per process (HTTP side, worker), so a growth can be told apart
            out["rss_each_trajectory_mb"] = [[round(x, 1) for x in rss_each_mb(proc.pid)]]
            parts = []
            for start in range(0, args.requests, 1000):
                parts.append(await drive(port, questions[start % len(questions):] + questions,
                                         min(1000, args.requests - start), c))
                out["rss_trajectory_mb"].append(round(rss_mb(proc.pid), 1))
                out["rss_each_trajectory_mb"].append([round(x, 1) for x in rss_each_mb(proc.pid)])
            out["rss_after_mb"] = out["rss_trajectory_mb"][-1]
            steal1 = steal_jiffies()
            out["cpu_steal_share"] = round((steal1[0] - steal0[0]) / max(1, steal1[1] - steal0[1]), 3)
            res = merge(parts)
        else:
            res = await drive(port, questions, args.requests_small, c)
        served += res["requests"]
        res.pop("_latencies", None)
        print(json.dumps(res), flush=True)
        out["levels"].append(res)
    out["server_cpu_ms_per_request"] = round((cpu_seconds(proc.pid) - cpu0) * 1e3 / max(1, served), 2)
    out["client_cpu_ms_per_request"] = round((time.process_time() - client_cpu0) * 1e3 / max(1, served), 3)
    return out


async def compare_interleaved(args, questions: list[str], servers: dict, clients: int) -> dict:
    """The same load on two live servers in alternating chunks of 1,000 requests, so that a noisy
    machine (CPU steal) weighs on both alike; per server: merged figures and CPU per request."""
    for port, proc in servers.values():
        await wait_ready(port, proc)
        await drive(port, questions, args.warmup, 8)
    parts: dict = {name: [] for name in servers}
    cpu0 = {name: cpu_seconds(proc.pid) for name, (_, proc) in servers.items()}
    for start in range(0, args.requests, 1000):
        for name, (port, _) in servers.items():
            parts[name].append(await drive(port, questions[start % len(questions):] + questions,
                                           min(1000, args.requests - start), clients))
    out = {}
    for name, (_, proc) in servers.items():
        out[name] = merge(parts[name])
        out[name]["server_cpu_ms_per_request"] = round((cpu_seconds(proc.pid) - cpu0[name]) * 1e3
                                                       / max(1, out[name]["requests"]), 2)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--kb", required=True)
    p.add_argument("--questions", default=None, help="KBQA JSON lines (default: kgclue/dev.json of the data dir)")
    p.add_argument("--requests", type=int, default=10_000, help="requests at the highest concurrency")
    p.add_argument("--requests-small", type=int, default=500, help="requests at the lower levels")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--levels", default="1,8,32")
    p.add_argument("--no-gen", action="store_true",
                   help="serve without the GEN head (default: as the model's pipeline.json asks)")
    p.add_argument("--threads", type=int, help="server torch threads")
    p.add_argument("--max-wait-ms", type=float, help="server micro-batching wait")
    p.add_argument("--max-batch", type=int, help="server micro-batch size")
    p.add_argument("--compare-unbatched", action="store_true")
    p.add_argument("--workers", type=int, help="server QA worker processes (default: wenzhi serve's)")
    p.add_argument("--compare-in-process", action="store_true",
                   help="only: the top level on a worker-process server and an --in-process one, interleaved")
    p.add_argument("--compare-workers", metavar="A,B",
                   help="only: the top level on servers with A and with B worker processes, interleaved")
    p.add_argument("--log-dir", default="/tmp")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from wenzhi.qa_service.data import read_qa

    if args.questions is None:
        from wenzhi.kg.datadir import data_path

        args.questions = str(data_path("kgclue/dev.json"))
    questions = [ex.question for ex in read_qa(args.questions)]
    levels = [int(x) for x in args.levels.split(",")]
    result: dict = {"model": args.model, "kb": args.kb, "cpus": os.cpu_count(), "host": machine_facts(),
                    "gen_served": not args.no_gen and gen_weighted(args.model), "max_batch": args.max_batch}
    if args.compare_in_process or args.compare_workers:
        if args.compare_workers:
            a, b = (int(x) for x in args.compare_workers.split(","))
            arms = ((f"workers_{a}", ["--workers", str(a)]), (f"workers_{b}", ["--workers", str(b)]))
        else:
            arms = (("worker_process", []), ("in_process", ["--in-process"]))
        servers = {}
        try:
            for name, extra in arms:
                port = free_port()
                servers[name] = (port, start_server(args, port, extra))
            cmp = asyncio.run(compare_interleaved(args, questions, servers, max(levels)))
        finally:
            for _, proc in servers.values():
                proc.terminate()
                proc.wait(30)
        result.update(cmp)
        (first, _), (second, _) = arms
        result["throughput_ratio"] = round(cmp[first]["throughput_rps"] / cmp[second]["throughput_rps"], 2)
        result["p99_ms_at_32"] = cmp[first]["p99_ms"]
        result["errors"] = sum(v["errors"] for v in cmp.values())
        print(json.dumps(result))
        return 0
    port = free_port()
    proc = start_server(args, port, [])
    try:
        result.update(asyncio.run(run_levels(args, port, questions, proc, levels)))
    finally:
        proc.terminate()
        proc.wait(30)
    if args.compare_unbatched:
        port = free_port()
        proc = start_server(args, port, ["--max-batch", "1"])
        try:
            ub = asyncio.run(run_levels(args, port, questions, proc, [max(levels)]))
        finally:
            proc.terminate()
            proc.wait(30)
        top = result["levels"][-1]
        result["unbatched_at_max"] = ub["levels"][-1]
        result["batching_throughput_ratio"] = round(top["throughput_rps"] / ub["levels"][-1]["throughput_rps"], 2)
    top = next(l for l in result["levels"] if l["clients"] == max(levels))
    result["p99_ms_at_32"] = top["p99_ms"]
    result["errors"] = sum(l["errors"] for l in result["levels"])
    result["rss_growth_mb"] = round(result["rss_after_mb"] - result["rss_before_mb"], 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

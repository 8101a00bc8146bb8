"""Hostile requests and faults against a live `wenzhi serve` (issue 13).

    .venv/bin/python bench/fuzz_service.py --model runs/demo/qa --kb runs/demo/kb.sqlite --faults

Starts the server on a free port with short read deadlines, then sends a few hundred distinct
hostile requests over raw sockets (the bytes, headers and framing are the client's to choose)
across every endpoint: bad JSON values and encodings, lone surrogates, control characters, huge
and deeply nested bodies, wrong methods and content types, hostile paths, forged Host headers,
broken framing (Content-Length, chunked), HTTP/0.9, HTTP/2 and TLS bytes. Every request must get
an answer below 500. Then it checks that the server and its worker processes (`--workers`) are
the same ones and still answer. With --faults, after the fuzzing: an idle, a stalled-header, a stalled-body and
a dribbled-body connection (each cut off within its deadline), a double worker kill (`kill -9`
of the worker, then of its replacement while it loads: ready again within 60 s, /healthz 200
throughout) and a SIGTERM with a half-sent body in flight (the process exits within the
shutdown bound). Last line: a JSON object; exit status 0 when every goal is met.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
HEADER_TIMEOUT, BODY_TIMEOUT, SHUTDOWN_TIMEOUT = 2.0, 2.0, 2.0
GOOD_QUESTION = "龙编站的坐标是什么"


# -- the requests ------------------------------------------------------------------------------
def _req(method: str, path: str | bytes, body: bytes | None = None, headers: dict | None = None,
         host: str | None = "127.0.0.1", version: str = "HTTP/1.1") -> bytes:
    """One request as bytes. A str path has its non-ASCII characters percent-encoded (UTF-8); a
    bytes path goes as it is."""
    if isinstance(path, str):
        path = quote(path, safe="/%?&=#+*:;,!$'()[]@~").encode("ascii")
    lines = [method.encode() + b" " + path + b" " + version.encode()]
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    if host is not None:
        lines.append(f"Host: {host}".encode())
    for name, value in hdrs.items():
        if value is None:
            continue
        lines.append(name.encode() + b": " + (value if isinstance(value, bytes) else str(value).encode("latin-1")))
    if body is not None and "Content-Length" not in hdrs and "Transfer-Encoding" not in hdrs:
        lines.append(f"Content-Length: {len(body)}".encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def _json_str(s: str) -> bytes:
    """A JSON string literal: non-ASCII escaped, so lone surrogates travel as \\udXXX."""
    return json.dumps(s, ensure_ascii=True).encode()


QUESTIONS = [GOOD_QUESTION, "", " ", "\u3000\u3000", "\t\n\r", "问" * 256, "问" * 257, "问" * 5000,
             "龙编站\x00的坐标", "\x1b[31m龙编站", "\ud800", "\udfff", "a\ud800b", "\ud800\udc00", "\uffff",
             "\ue000龙编站", "\u202e龙编站的坐标", "\u200b" * 10, "\u200b龙编站", "e\u0301" * 50, "😀" * 64,
             "null", "<script>alert(1)</script>", "'; DROP TABLE entities;--", "%s%s%n%x", "{{7*7}}",
             "../../etc/passwd", "\\", "\u2028\u2029", "\ufeff龙编站", "ＡＢＣ？", "?" * 256, "的" * 256,
             "龙编站\n2026-01-01 INFO forged log line"]
NON_STRINGS = [b"42", b"1.5", b"true", b"null", b"[]", b"{}", b'["a"]', b'{"a": 1}', b"NaN", b"-Infinity"]
TOP_KS = [b"1", b"20", b"0", b"-1", b"21", b"2147483648", b"9223372036854775808", b"18446744073709551616",
          b"1.0", b"1.5", b'"5"', b"true", b"null", b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400",
          b"1e308", b"[]", b"{}", b"5e-324", b"-0", b"1" + b"0" * 5000]
TEXTS = QUESTIONS + ["龙" * 2000, "龙" * 2001, "守望星光是韩玉玲、刘东考演唱的歌曲吗" * 100]
MALFORMED = [b"", b"{", b"}", b"[]", b'"a string"', b"1", b"null", b"true", b'{"question": "a"',
             b'{"question": "a"}garbage', b'{"question": "a", "question": "b"}', b"[" * 10000,
             b'{"a":' * 5000, b"1e99999", b"\xef\xbb\xbf" + b'{"question": "a"}',
             '{"question": "龙编站"}'.encode("utf-16-le"), '{"question": "龙编站"}'.encode("utf-16"),
             '{"question": "龙编站"}'.encode("utf-32"), b'{"question": "\xff\xfe"}', b'{"question": "\xc0\xaf"}',
             b'{"question": "\xed\xa0\x80"}', b'{"question": "\xed\xbf\xbf"}', b'{"question": "\xf4\x90\x80\x80"}',
             b'{"question": "a\x00b"}', b'{"question": "a\nb"}', b"{'question': 'a'}", b'{"question": "a",}',
             b'{"question": "a" /* c */}', b"NaN", b"-", b"\x00" * 64, b'{"question": "' + b"\\" * 3 + b'"}',
             b'{"question": "\\u"}', b'{"question": "\\uZZZZ"}', b'{"question": "a", "top_k": 5, "top_k": NaN}']
PATHS = ["/v1/qa", "/v1/link", "/v1/entities/x", "/healthz", "/readyz", "/openapi.json", "/docs", "/redoc",
         "/nonexistent", "/"]
ENTITY_PATHS = ["%0a", "%0d%0aX-Forged: 1", "%00", "a%00b", "%ff", "%ed%a0%80", "%c0%af", "%2F", "%2e%2e",
                "..%2f..%2fetc%2fpasswd", "名" * 256, "名" * 257, "名" * 3000, "a%20b", "a+b", "%", "%zz",
                "%e9%be%99%e7%bc%96%e7%ab%99", "%e2%80%ae%e9%be%99", "%1b%5b31m", "x?q=%00%ff&&&=", "x#frag",
                "%ef%bf%bf", "%f0%9f%98%80" * 64, "%20%20", "%e3%80%80"]


def cases() -> list[tuple[str, bytes]]:
    """(name, raw request) pairs, each request distinct."""
    out: list[tuple[str, bytes]] = []
    for i, q in enumerate(QUESTIONS):
        out.append((f"qa question #{i}", _req("POST", "/v1/qa", b'{"question": ' + _json_str(q) + b"}")))
    for i, v in enumerate(NON_STRINGS):
        out.append((f"qa question non-string #{i}", _req("POST", "/v1/qa", b'{"question": ' + v + b"}")))
        out.append((f"link text non-string #{i}", _req("POST", "/v1/link", b'{"text": ' + v + b"}")))
    for i, k in enumerate(TOP_KS):
        body = b'{"question": ' + _json_str(GOOD_QUESTION) + b', "top_k": ' + k + b"}"
        out.append((f"qa top_k {k[:20]!r}", _req("POST", "/v1/qa", body)))
    for i, t in enumerate(TEXTS):
        out.append((f"link text #{i}", _req("POST", "/v1/link", b'{"text": ' + _json_str(t) + b"}")))
    for i, body in enumerate(MALFORMED):
        for path in ("/v1/qa", "/v1/link"):
            out.append((f"{path} malformed #{i}", _req("POST", path, body)))
    valid = {"/v1/qa": b'{"question": ' + _json_str(GOOD_QUESTION) + b"}", "/v1/link": b'{"text": "abc"}'}
    for path, body in valid.items():
        for ct in (None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                   "application/json; charset=latin-1", "application/json; charset=utf-16",
                   "application/merge-patch+json", "application/json, text/plain", ";;;", "application/" + "j" * 8000):
            out.append((f"{path} content-type {str(ct)[:30]}", _req("POST", path, body, {"Content-Type": ct})))
        out.append((f"{path} extra field", _req("POST", path, body[:-1] + b', "extra": 1}')))
        out.append((f"{path} extra surrogate key", _req("POST", path, body[:-1] + b', "\\ud800": 1}')))
        out.append((f"{path} 200 extra keys", _req("POST", path, body[:-1] + b"".join(
            b', "k%d": %d' % (i, i) for i in range(200)) + b"}")))
        out.append((f"{path} 1 MB body", _req("POST", path, b" " * (1 << 20) + body)))
        out.append((f"{path} 1 MB chunked", _req("POST", path, b"".join(
            b"4000\r\n" + b" " * 0x4000 + b"\r\n" for _ in range(64)) + b"0\r\n\r\n", {"Transfer-Encoding": "chunked"})))
    for path in PATHS:
        for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"):
            out.append((f"{method} {path}", _req(method, path, b"{}" if method != "TRACE" else None)))
    for path in ("/v1/qa", "/v1/link"):
        out.append((f"GET {path}", _req("GET", path)))
        out.append((f"HEAD {path}", _req("HEAD", path)))
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        out.append((f"POST {path}", _req("POST", path, b"{}")))
        out.append((f"GET {path} with query garbage", _req("GET", path + "?%00=%ff&a=" + "b" * 2000)))
    for name in ENTITY_PATHS:
        out.append((f"entity {name[:30]}", _req("GET", "/v1/entities/" + name)))
    for raw in (b"/v1/entities/\xe9\xbe\x99\xe7\xbc\x96\xe7\xab\x99", b"/v1/entities/\xff\xfe", b"/v1/entities/a\x7fb",
                b"//v1/entities/x", b"/v1/entities/", b"/v1/qa/", b"/v1//qa", b"/v1/entities/x/", b"/%2e%2e/healthz"):
        out.append((f"raw path {raw[:30]!r}", _req("GET", raw)))
    ok = b'{"question": ' + _json_str(GOOD_QUESTION) + b"}"
    for host in (None, "evil.example", "evil.example:80", "", "127.0.0.1:0", "[::1]", "localhost:99999",
                 "127.0.0.1.evil.example", "h" * 5000, "127.0.0.1\x00.evil", "[::1", "a b"):
        out.append((f"host {str(host)[:30]!r}", _req("GET", "/v1/qa/", host=host)))
        out.append((f"host {str(host)[:30]!r} post", _req("POST", "/v1/qa", ok, host=host)))
    out.append(("two hosts", _req("GET", "/healthz", headers={"Host": "evil.example"})))
    for name, headers in [("negative length", {"Content-Length": "-1"}), ("non-numeric length", {"Content-Length": "ab"}),
                          ("huge length", {"Content-Length": str(10 ** 20)}), ("short length", {"Content-Length": "5"}),
                          ("two lengths", {"Content-Length": "5", "content-length": "40"}),
                          ("length and chunked", {"Content-Length": str(len(ok)), "Transfer-Encoding": "chunked"}),
                          ("chunked, bad size", {"Transfer-Encoding": "chunked"}),
                          ("chunked, overflowing size", {"Transfer-Encoding": "chunked"}),
                          ("chunked, extension", {"Transfer-Encoding": "chunked"}),
                          ("unknown transfer-encoding", {"Transfer-Encoding": "gzip"}),
                          ("expect 100-continue", {"Expect": "100-continue"}),
                          ("websocket upgrade", {"Connection": "Upgrade", "Upgrade": "websocket"}),
                          ("h2c upgrade", {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c"}),
                          ("1000 headers", {f"X-H{i}": "v" for i in range(1000)}),
                          ("64 KB header", {"X-Big": "v" * 65536}),
                          ("NUL in a header", {"X-Nul": b"a\x00b"}), ("space in a header name", {"X Bad": "v"}),
                          ("obs-fold", {"X-Fold": b"a\r\n b"})]:
        body = {"chunked, bad size": b"zz\r\nabc\r\n0\r\n\r\n",
                "chunked, overflowing size": b"ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
                "chunked, extension": b"%x;ext=1\r\n" % len(ok) + ok + b"\r\n0\r\n\r\n"}.get(name, ok)
        out.append((name, _req("POST", "/v1/qa", body, headers)))
    for name, raw in [("HTTP/1.0", _req("GET", "/healthz", version="HTTP/1.0")),
                      ("HTTP/0.9", b"GET /healthz\r\n\r\n"), ("HTTP/9.9", _req("GET", "/healthz", version="HTTP/9.9")),
                      ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
                      ("absolute-form", _req("GET", "http://evil.example/healthz")),
                      ("asterisk-form", _req("OPTIONS", "*")), ("unknown method", _req("FOO", "/healthz")),
                      ("lowercase method", _req("get", "/healthz")), ("binary junk", bytes(range(256)) * 4),
                      ("TLS ClientHello", bytes.fromhex("16030100a5010000a10303") + os.urandom(32) + b"\x00" * 64),
                      ("bare LF", b"GET /healthz HTTP/1.1\nHost: 127.0.0.1\nConnection: close\n\n"),
                      ("pipelined", _req("GET", "/healthz").replace(b"Connection: close\r\n", b"") * 3),
                      ("request line 64 KB", _req("GET", "/healthz?" + "a" * 65536))]:
        out.append((name, raw))
    return out


# -- a raw HTTP client ---------------------------------------------------------------------------
def send_raw(port: int, raw: bytes, timeout: float = 20.0, whole: bool = False) -> tuple[int | None, bytes, float]:
    """(status or None when the server closed without answering, the response's start (all of
    it when `whole`: read to the connection's end), seconds)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):  # refused before all of it went
            pass
        data = b""
        try:
            while whole or b"\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    seconds = time.monotonic() - t0
    if not data.startswith(b"HTTP/"):
        return None, data[:200], seconds
    return int(data.split(b" ", 2)[1]), data if whole else data[:400], seconds


def _children(pid: int) -> list[int]:
    """The QA worker processes of server `pid` (its spawned children, not multiprocessing's
    resource tracker)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            try:
                if b"spawn_main" in Path(f"/proc/{kid}/cmdline").read_bytes():
                    out.append(kid)
            except OSError:
                pass
    return out


def _get(port: int, path: str) -> tuple[int | None, dict, bytes]:
    status, head, _ = send_raw(port, _req("GET", path), timeout=10, whole=True)
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            headers[k.strip().lower().decode()] = v.strip().decode("latin-1")
    return status, headers, head.split(b"\r\n\r\n", 1)[-1]


def start_server(model: str, kb: str, log_path: Path, workers: int = 1) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "wenzhi", "serve", "--model", model, "--kb", kb, "--port", str(port), "--no-gen",
           "--threads", "1", "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
           "--shutdown-timeout", str(SHUTDOWN_TIMEOUT), "--workers", str(workers)]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log_path, "w"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if _get(port, "/readyz")[0] == 200:
                return server, port
        except OSError:
            pass
        if server.poll() is not None:
            break
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"the server did not get ready; see {log_path}")


def _answers(port: int) -> bool:
    body = b'{"question": ' + _json_str(GOOD_QUESTION) + b"}"
    return send_raw(port, _req("POST", "/v1/qa", body), timeout=30)[0] == 200


def fuzz(port: int, server_pid: int, workers: int = 1) -> dict:
    all_cases = cases()
    workers_before = _children(server_pid)
    by_status: dict[str, int] = {}
    server_errors, unanswered = [], []
    for name, raw in all_cases:
        status, head, _ = send_raw(port, raw)
        by_status[str(status)] = by_status.get(str(status), 0) + 1
        if status is None:
            unanswered.append(name)
        elif status >= 500:
            server_errors.append(f"{name}: {head[:120]!r}")
    return {"requests": len(all_cases), "distinct": len({raw for _, raw in all_cases}),
            "responses_by_status": dict(sorted(by_status.items())), "server_errors": server_errors,
            "unanswered": unanswered, "server_alive": _get(port, "/healthz")[0] == 200,
            "same_worker": sorted(workers_before) == sorted(_children(server_pid)) and len(workers_before) == workers,
            "still_answers": _answers(port)}


# -- fault cases -------------------------------------------------------------------------------
def _stall(port: int, first: bytes, dribble: bytes = b"", cap: float = 30.0) -> tuple[int | None, float]:
    """Send `first`, then `dribble` a byte every 0.3 s; (status or None, seconds until the server
    answered or closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=cap)
    t0 = time.monotonic()
    s.sendall(first)
    data = b""
    try:
        for byte in dribble:
            s.settimeout(0.3)
            try:
                data = s.recv(1000)
                break
            except socket.timeout:
                s.sendall(bytes([byte]))
        s.settimeout(cap)
        data = data or s.recv(1000)
    except (socket.timeout, ConnectionResetError, BrokenPipeError):
        pass
    seconds = time.monotonic() - t0
    s.close()
    return (int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else None), seconds


def faults(server: subprocess.Popen, port: int) -> dict:
    out: dict = {}
    head = b"POST /v1/qa HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    for name, first, dribble, bound in [
            ("idle connection", b"", b"", HEADER_TIMEOUT),
            ("stalled headers", b"POST /v1/qa HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le", b"", HEADER_TIMEOUT),
            ("dribbled headers", b"POST /v1/qa HTTP/1.1\r\n", b"X-Slow: " + b"a" * 60, HEADER_TIMEOUT),
            ("stalled body", head + b'{"questi', b"", BODY_TIMEOUT),
            ("dribbled body", head + b'{"question": "', "龙编站".encode() * 10, BODY_TIMEOUT)]:
        status, seconds = _stall(port, first, dribble)
        out[name] = {"status": status, "seconds": round(seconds, 2), "bound_s": bound,
                     "ok": seconds <= bound + 1.5 and status in (408, None)}
    out["still_answers_after_stalls"] = _answers(port)

    # double worker kill: the worker, then its replacement while it loads
    (first,) = _children(server.pid)
    killed_at = time.monotonic()
    os.kill(first, signal.SIGKILL)
    second = None
    while time.monotonic() - killed_at < 30 and second is None:
        second = next((c for c in _children(server.pid) if c != first), None)
        time.sleep(0.01)
    seen, health = set(), set()
    if second is not None:
        time.sleep(0.3)  # well inside its loading (several seconds)
        os.kill(second, signal.SIGKILL)
    ready_s, retry_after = None, set()
    while time.monotonic() - killed_at < 90:
        status, headers, body = _get(port, "/readyz")
        health.add(_get(port, "/healthz")[0])
        if status == 200:
            ready_s = time.monotonic() - killed_at
            break
        seen.add(json.loads(body or b"{}").get("status"))
        if "retry-after" in headers:
            retry_after.add(headers["retry-after"])
        time.sleep(0.2)
    out["double_worker_kill"] = {"replacement_killed_while_loading": second is not None,
                                 "readyz_statuses_seen": sorted(map(str, seen)), "retry_after_seen": sorted(retry_after),
                                 "healthz_statuses": sorted(map(str, health)),
                                 "ready_again_s": None if ready_s is None else round(ready_s, 1),
                                 "answers_after": _answers(port),
                                 "ok": ready_s is not None and ready_s <= 60 and health == {200} and "failed" not in seen}

    # SIGTERM with a half-sent body in flight
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(head + b'{"questi')
    time.sleep(0.2)
    t0 = time.monotonic()
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        pass
    exited = server.poll() is not None
    s.close()
    bound = SHUTDOWN_TIMEOUT + 10  # graceful shutdown, then the worker's own stop (joined up to 10 s)
    out["sigterm_with_half_body"] = {"exited": exited, "seconds": round(time.monotonic() - t0, 2), "bound_s": bound,
                                     "ok": exited and time.monotonic() - t0 <= bound}
    return out


def run(model: str, kb: str, with_faults: bool, log_path: Path, workers: int = 1) -> dict:
    server, port = start_server(model, kb, log_path, workers)
    try:
        report = {"fuzz": fuzz(port, server.pid, workers)}
        if with_faults:
            report["faults"] = faults(server, port)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)
    f = report["fuzz"]
    report["ok"] = (f["requests"] >= 200 and not f["server_errors"] and not f["unanswered"] and f["server_alive"]
                    and f["same_worker"] and f["still_answers"]
                    and all(v["ok"] for v in report.get("faults", {}).values() if isinstance(v, dict))
                    and report.get("faults", {}).get("still_answers_after_stalls", True))
    return report


def main() -> int:
    global HEADER_TIMEOUT, BODY_TIMEOUT, SHUTDOWN_TIMEOUT  # the deadlines the server runs with and is held to
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory (from `wenzhi finetune`)")
    p.add_argument("--kb", required=True, help="triple store (from `wenzhi kg import`)")
    p.add_argument("--faults", action="store_true", help="also the stalled clients, double worker kill and SIGTERM")
    p.add_argument("--workers", type=int, default=1,
                   help="serve's QA worker processes (default: %(default)s; the faults are for one worker)")
    p.add_argument("--log", default="/tmp/fuzz-serve.log", help="the server's log (default: %(default)s)")
    p.add_argument("--header-timeout", type=float, default=HEADER_TIMEOUT, help="serve's (default: %(default)s)")
    p.add_argument("--body-timeout", type=float, default=BODY_TIMEOUT, help="serve's (default: %(default)s)")
    p.add_argument("--shutdown-timeout", type=float, default=SHUTDOWN_TIMEOUT, help="serve's (default: %(default)s)")
    args = p.parse_args()
    if args.faults and args.workers != 1:
        p.error("--faults expects one worker: its double kill waits for the service to say 'loading', which a pool "
                "that replaces one worker while the other answers does not (tests/qa/test_service_workers.py)")
    HEADER_TIMEOUT, BODY_TIMEOUT, SHUTDOWN_TIMEOUT = args.header_timeout, args.body_timeout, args.shutdown_timeout
    t0 = time.time()
    report = run(args.model, args.kb, args.faults, Path(args.log), args.workers)
    report["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(report, ensure_ascii=False))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""The REST service's settings: a module of their own, light to import, so that `wenzhi serve`'s
flags take their defaults from here without loading FastAPI (qa_service/service.py does)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServiceSettings:
    model: str
    kb: str
    index: str | None = None
    use_gen: bool = True
    timeout_s: float = 10.0
    max_batch: int = 32
    max_wait_ms: float = 0.0
    threads: int | None = None
    manage_gc: bool = False  # `wenzhi serve`: the process is the service's own (see backend.quiet_gc)
    worker_process: bool = False  # `wenzhi serve`: the pipeline in a process of its own (see backend.py)
    workers: int = 1  # with worker_process: that many worker processes answering side by side
    restart_attempts: int = 5  # failed loads in a row before giving up (then /healthz fails)
    restart_backoff_s: float = 1.0  # wait before the 2nd attempt, doubled for each next one ...
    restart_backoff_max_s: float = 16.0  # ... up to this
    trusted_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")  # Host headers answered; "*": any
    max_body_bytes: int = 64 * 1024  # the largest valid request is ~12 KB (2,000 characters, \\u-escaped)
    body_timeout_s: float = 10.0  # the whole request body must arrive within this

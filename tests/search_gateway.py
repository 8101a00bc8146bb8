"""A secured front for osmem-server in tests: TLS with a self-signed certificate, and an API key
or basic-auth login demanded on every request, as a production cluster (or the reverse proxy in
front of one) does. osmem-server itself speaks plain HTTP and checks no credentials; requests
that pass are forwarded to it unchanged, so every search still runs on the emulated cluster.

It keeps the Authorization headers it saw, so a test can tell which credentials arrived."""
from __future__ import annotations

import base64
import http.client
import json
import shutil
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

#: The credentials the `secured_cluster` fixture (tests/conftest.py) accepts; tests look for them
#: in every output.
CLUSTER_API_KEY = "apikey-Zq7Ws2Xv9Kp4"
CLUSTER_USER, CLUSTER_PASSWORD = "wenzhi-reader", "pw-Hf3Lm8Rt6Yc1"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "authorization", "host", "content-length"}


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, made with the openssl command; the certificate is its
    own CA bundle."""
    if shutil.which("openssl") is None:
        raise FileNotFoundError("the openssl command is needed to make a test certificate")
    cert, key = folder / "cluster.pem", folder / "cluster.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


class SearchGateway:
    """https://127.0.0.1:PORT in front of `upstream` (http), answering 401 unless a request
    carries `Authorization: ApiKey <api_key>` or basic auth for `user`/`password`."""

    def __init__(self, upstream: str, cert: Path, key: Path, api_key: str, user: str, password: str):
        target = urlsplit(upstream)
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.accepted = {f"ApiKey {api_key}", f"Basic {basic}"}
        self.seen: list[str | None] = []  # the Authorization header of every request, in order
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args):  # quiet: the test's output is checked for secrets
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                auth = self.headers.get("Authorization")
                gateway.seen.append(auth)
                if auth not in gateway.accepted:
                    payload = json.dumps({"error": {"type": "security_exception",
                                                    "reason": "missing or wrong authentication credentials"},
                                          "status": 401}).encode()
                    return self._reply(401, {"Content-Type": "application/json",
                                             "WWW-Authenticate": 'Basic realm="security"'}, payload)
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self._reply(resp.status, {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP}, data,
                                head=self.command == "HEAD")
                finally:
                    conn.close()

            def _reply(self, status: int, headers: dict, data: bytes, head: bool = False):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

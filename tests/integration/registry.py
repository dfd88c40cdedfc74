"""A real registry on loopback for the pull tests and bench/pull.py: Debian's
docker-registry with a config of the test's own, a token server of the test's own for
the Bearer flow, a programmable proxy in front (counts requests; corrupts, substitutes,
stalls or redirects what it is told to), and test images pushed with skopeo.

Runs in: the test runner (the servers are threads of it; docker-registry is a child
process, stopped by its PID). Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import json
import os
import signal
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYER_TAR, LAYER_GZ = "application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip"
SERVICE, ISSUER = "rbox-test-registry", "rbox-test-issuer"
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


class Registry:
    """docker-registry serving `storage` on 127.0.0.1:PORT; with `token` (realm URL,
    certificate file), it asks for Bearer tokens signed by that certificate's key."""

    def __init__(self, top: Path, storage: Path, token: tuple[str, Path] | None = None):
        self.port = free_port()
        self.top = top
        top.mkdir(parents=True, exist_ok=True)
        auth = ""
        if token is not None:
            auth = (f"auth:\n  token:\n    realm: {token[0]}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
                    f"    rootcertbundle: {token[1]}\n")
        config = top / "config.yml"
        config.write_text(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
                          f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
                          f"http:\n  addr: 127.0.0.1:{self.port}\n{auth}")
        self.log = open(top / "registry.log", "wb")
        # setpriv --pdeathsig: the registry dies with the test run, even a killed one.
        self.proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "docker-registry", "serve", str(config)],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            try:
                status, _, _ = get(self.port, "/v2/")
                if status in (200, 401):
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"docker-registry did not start: {(top / 'registry.log').read_text()[-2000:]}")
            time.sleep(0.05)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)       # by its PID (Popen), never by name
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()

    def manifest(self, repo: str, reference: str, token: str | None = None) -> tuple[str, dict[str, object]]:
        """(digest, parsed) of a manifest as the registry serves it: read here, not by rbox."""
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        status, _, body = get(self.port, f"/v2/{repo}/manifests/{reference}", headers)
        assert status == 200, (status, body[:300])
        return sha(body), json.loads(body)


def push(layout: Path, tag: str, registry: Registry, dest: str, every: bool = False) -> None:
    """The image tagged `tag` in the OCI layout to `dest` (REPO:TAG) on the registry,
    byte for byte (skopeo would otherwise compress plain tar layers); with `every`, an
    index and all its images (skopeo copy --all)."""
    r = subprocess.run(["skopeo", "copy", "--insecure-policy", "--dest-tls-verify=false", "--preserve-digests",
                        *(["--all"] if every else []), f"oci:{layout}:{tag}", f"docker://{registry.host}/{dest}"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr


# --- images -----------------------------------------------------------------------


def tar_layer(files: dict[str, bytes | str], gz: bool = False) -> bytes:
    """A layer: files (bytes), directories (name ending in `/`), symlinks (a str target)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime = 1_700_000_000
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o755
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class Layout:
    """An OCI image layout written by the test; images tagged in its index.json."""

    def __init__(self, top: Path):
        self.top = top
        (top / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (top / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.tags: list[dict[str, object]] = []

    def blob(self, data: bytes, media: str) -> dict[str, object]:
        (self.top / "blobs" / "sha256" / sha(data)[7:]).write_bytes(data)
        return {"mediaType": media, "digest": sha(data), "size": len(data)}

    def manifest(self, layers: list[bytes], config: dict[str, object], arch: str = "amd64") -> dict[str, object]:
        raw = json.dumps({"architecture": arch, "os": "linux", "config": config,
                          "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": self.blob(raw, "application/vnd.oci.image.config.v1+json"),
                           "layers": [self.blob(layer, LAYER_GZ if layer[:2] == b"\x1f\x8b" else LAYER_TAR)
                                      for layer in layers]}).encode()
        return self.blob(body, OCI_MANIFEST)

    def tag(self, tag: str, described: dict[str, object]) -> None:
        self.tags.append({**described, "annotations": {"org.opencontainers.image.ref.name": tag}})
        (self.top / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": self.tags}))

    def index(self, entries: list[tuple[dict[str, object], str]]) -> dict[str, object]:
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {**m, "platform": {"os": "linux", "architecture": arch}} for m, arch in entries]}).encode()
        return self.blob(body, OCI_INDEX)


# --- the token server ---------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass        # a client that went away (a killed rbox): not the test's concern


class TokenServer:
    """The distribution token spec's realm: GET /token?service=&scope= with Basic
    credentials USER:PASS answers a JWT (RS256, signed with `key`, the certificate in
    the x5c header, as docker-registry verifies against its rootcertbundle)."""

    def __init__(self, top: Path, user: str = "alice", password: str = "s3cret-pw"):
        self.user, self.password = user, password
        self.key, self.cert = top / "token.key", top / "token.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-subj", "/CN=rbox-test-token", "-days", "2"],
                       check=True, capture_output=True, stdin=subprocess.DEVNULL)
        self.der = ssl.PEM_cert_to_DER_cert(self.cert.read_text())
        self.issued: list[str] = []
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                auth = self.headers.get("Authorization") or ""
                server.requests.append({"path": url.path, "authorization": auth})
                expected = "Basic " + base64.b64encode(f"{server.user}:{server.password}".encode()).decode()
                if url.path != "/token" or auth != expected:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                token = server.sign(query.get("scope", []))
                body = json.dumps({"token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def sign(self, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a == "pull"]})
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(self.der).decode()]}
        claims = {"iss": ISSUER, "sub": self.user, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": os.urandom(8).hex(), "access": access}
        signing = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing.encode(),
                                   capture_output=True, check=True).stdout
        token = signing + "." + b64url(signature)
        self.issued.append(token)
        return token

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- the proxy ----------------------------------------------------------------------


class Proxy:
    """http://127.0.0.1:PORT forwarding to a registry, recording every request
    (`log`: path, range, whether it carried Authorization). Told per path:
    `substitute[path] = bytes` serves those bytes instead; `stall[path] = n` sends n
    bytes of the body, then holds the connection until `release()`; `redirect` paths
    answer 307 to a second listener on another port (`other`, another origin), which
    serves the upstream's bytes and records what it received in `other_log`;
    `location[path] = URL` answers 307 to URL as it is; `canned[path] = (status,
    headers, body)` answers that."""

    def __init__(self, upstream: int):
        self.upstream = upstream
        self.log: list[dict[str, object]] = []
        self.other_log: list[dict[str, object]] = []
        self.substitute: dict[str, bytes] = {}
        self.stall: dict[str, int] = {}
        self.stalled = threading.Event()
        self.released = threading.Event()
        self.redirect: set[str] = set()
        self.location: dict[str, str] = {}
        self.canned: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.parked: dict[str, bytes] = {}
        proxy = self

        class Front(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                proxy.front(self)

            def log_message(self, *args: object) -> None:
                pass

        class Other(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                proxy.other_log.append({"path": self.path, "authorization": self.headers.get("Authorization")})
                body = proxy.parked.get(self.path, b"")
                proxy.respond(self, 200 if body else 404, {"Content-Type": "application/octet-stream"}, body)

            def log_message(self, *args: object) -> None:
                pass

        self.servers = [QuietServer(("127.0.0.1", 0), handler) for handler in (Front, Other)]
        for server in self.servers:
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self.port = self.servers[0].server_address[1]
        self.other_port = self.servers[1].server_address[1]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def count(self, fragment: str) -> int:
        return sum(fragment in str(entry["path"]) for entry in self.log)

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self.release()
        for server in self.servers:
            server.shutdown()
            server.server_close()

    @staticmethod
    def respond(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        with contextlib.suppress(OSError):
            handler.wfile.write(body)

    def front(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        self.log.append({"path": path, "range": handler.headers.get("Range"),
                         "authorization": bool(handler.headers.get("Authorization"))})
        if path in self.canned:
            status, headers, body = self.canned[path]
            self.respond(handler, status, headers, body)
            return
        if path in self.location:
            self.respond(handler, 307, {"Location": self.location[path]}, b"")
            return
        forwarded = {k: v for k, v in handler.headers.items() if k.lower() in ("accept", "authorization", "range")}
        status, headers, body = get(self.upstream, path, forwarded)
        keep = {k: v for k, v in headers.items() if k in ("content-type", "docker-content-digest", "www-authenticate",
                                                          "content-range", "location")}
        if status in (200, 206) and path in self.redirect:
            key = f"/parked/{os.urandom(6).hex()}"
            self.parked[key] = body
            self.respond(handler, 307, {"Location": f"http://127.0.0.1:{self.other_port}{key}"}, b"")
            return
        if status == 200 and path in self.substitute:
            body = self.substitute[path]
        if status in (200, 206) and path in self.stall:
            handler.send_response(status)
            for key, value in keep.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            with contextlib.suppress(OSError):
                handler.wfile.write(body[:self.stall[path]])
                handler.wfile.flush()
            self.stalled.set()
            self.released.wait(60)
            handler.close_connection = True
            return
        self.respond(handler, status, keep, body)

"""The HTTP side of `rbox image pull`: a client of the OCI distribution API (a registry's
/v2/) with the standard library only (http.client, ssl).

Runs in: parent, and its download threads: each thread keeps its own connections
(http.client is not thread-safe). Imported only by pull.py, after the unpacking sandbox
has started: http.client and ssl cost tens of milliseconds to import, never paid on
rbox's start-up path nor by other commands.

- Plain http is refused, before each connection, unless the host is a loopback address
  or the user said --insecure (registry.check_scheme): for the registry, every redirect,
  and the token realm.
- Authentication as the registry asks: on 401, `WWW-Authenticate: Bearer realm=...,
  service=...,scope=...` sends us to the realm for a token (with the user's credentials
  as HTTP Basic when given), then the request is retried with `Authorization: Bearer`;
  a `Basic` challenge takes the credentials directly. The token and the credentials are
  sent only to the origin that asked for them (a redirect elsewhere, such as a storage
  service's signed URL, goes without), and are never printed, not even with --debug.
- Manifests: Docker v2 schema 2 or OCI; a manifest list or OCI index picks this host's
  os/architecture/variant (registry.pick_platform); a manifest named by a digest is
  checked against it.
- Blobs are opened at an offset (HTTP Range), so that blobs.py can continue an
  interrupted one.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import ssl
import threading
import urllib.parse
from io import BufferedIOBase

from rootless import __version__, log
from rootless.errors import RboxError
from rootless.image import registry
from rootless.image.registry import Image, Ref, bad_manifest, check_scheme

MAX_MANIFEST = 4 << 20          # the distribution spec's suggested limit for manifests
TIMEOUT = 30.0                  # seconds without a byte before a request fails


class Client:
    """Requests to one registry for one repository, from any thread."""

    def __init__(self, ref: Ref, insecure: bool, creds: tuple[str, str] | None):
        self.ref, self.insecure, self.creds = ref, insecure, creds
        # Before any connection: a reference that asks for plain http off this machine.
        self.origin = registry.origin(ref, insecure)
        self.where = ref.host if ref.host != registry.DOCKER_HUB else "docker.io"
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []      # every thread's, for close()
        self._all_lock = threading.Lock()
        self._auth_lock = threading.Lock()
        self._authorization: str | None = None      # the header value; never printed

    # --- connections ---------------------------------------------------------------

    def _connection(self, origin: tuple[str, str, int]) -> http.client.HTTPConnection:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(origin)
        if conn is None:
            scheme, hostname, port = origin
            if scheme == "https":
                conn = http.client.HTTPSConnection(hostname, port, timeout=TIMEOUT,
                                                   context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(hostname, port, timeout=TIMEOUT)
            conns[origin] = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                conn.close()

    def _send(self, origin: tuple[str, str, int], path: str,
              headers: dict[str, str]) -> http.client.HTTPResponse:
        """One GET; a kept-alive connection that the server closed meanwhile is opened
        again once (GET is idempotent)."""
        for attempt in (1, 2):
            conn = self._connection(origin)
            try:
                conn.request("GET", path, headers=headers)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                if attempt == 2:
                    raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    # --- requests ------------------------------------------------------------------

    def get(self, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        """GET path (under the registry), authenticated as the registry asks and
        following redirects; the response of any status but 401, for the caller to read."""
        for attempt in (1, 2):
            response = self._get(path, dict(headers))
            if response.status != 401:
                return response
            challenge = response.getheader("WWW-Authenticate") or ""
            response.read()
            if attempt == 2:
                raise self._denied(refused_token=True)
            self._authenticate(challenge)
        raise AssertionError("unreachable")

    def _get(self, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        origin, target = self.origin, path
        headers.update({"User-Agent": f"rbox/{__version__}", "Accept-Encoding": "identity"})
        for _ in range(6):
            sent = dict(headers)
            if origin == self.origin and self._authorization:
                sent["Authorization"] = self._authorization    # only where it was asked for
            log.step(f"GET {origin[0]}://{_hostport(origin)}{target.partition('?')[0]}")
            response = self._request(origin, target, sent)
            if response.status not in (301, 302, 303, 307, 308):
                return response
            location = response.getheader("Location") or ""
            response.read()
            origin, target = self._redirect(origin, target, location)
        raise RboxError(f"the registry {self.where} redirects too often", hint="the registry is misconfigured; "
                        "tell its operator")

    def _request(self, origin: tuple[str, str, int], target: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        where = _hostport(origin)
        try:
            return self._send(origin, target, headers)
        except ssl.SSLCertVerificationError as e:
            raise RboxError(f"cannot verify the TLS certificate of {where}: {e.verify_message}",
                            hint="if the registry uses a private CA, set SSL_CERT_FILE to its certificate bundle"
                            ) from None
        except ssl.SSLError as e:
            raise RboxError(f"TLS with {where} failed: {e.reason or e}",
                            hint="is it an http registry? Plain http needs --insecure (or a loopback address)"
                            ) from None
        except socket.gaierror as e:
            raise RboxError(f"cannot resolve the registry host `{log.printable(origin[1])}`: {e.strerror}",
                            hint="check the host name in the reference and your network") from None
        except TimeoutError:
            raise RboxError(f"the registry {where} did not answer within {TIMEOUT:.0f} s",
                            hint="check that the registry is up and reachable; try again later") from None
        except (OSError, http.client.HTTPException) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
            raise RboxError(f"cannot reach the registry {where}: {reason}",
                            hint="check the address and port, and that the registry is running") from None

    def _redirect(self, origin: tuple[str, str, int], target: str,
                  location: str) -> tuple[tuple[str, str, int], str]:
        base = f"{origin[0]}://{_hostport(origin)}{target}"
        return self._url(urllib.parse.urljoin(base, location), "a redirect to")

    def _url(self, text: str, what: str) -> tuple[tuple[str, str, int], str]:
        """(origin, path?query) of a URL the registry gave, checked by the http rule
        before anything connects there."""
        url = urllib.parse.urlsplit(text)
        try:
            port = url.port
        except ValueError:
            port = -1
        if not url.hostname or port == -1:
            shown = log.printable(text.partition("?")[0])[:100]       # a signed URL's query is a secret
            raise RboxError(f"the registry {self.where} gave an invalid URL `{shown}`",
                            hint="the registry is misconfigured; tell its operator")
        check_scheme(url.scheme, url.hostname, self.insecure, what)
        return (url.scheme, url.hostname, port or (443 if url.scheme == "https" else 80)), \
            (url.path or "/") + (f"?{url.query}" if url.query else "")

    def _authenticate(self, challenge: str) -> None:
        scheme, params = registry.parse_challenge(challenge)
        with self._auth_lock:
            if scheme == "basic":
                if self.creds is None:
                    raise self._denied()
                raw = f"{self.creds[0]}:{self.creds[1]}".encode()
                self._authorization = "Basic " + base64.b64encode(raw).decode()
            elif scheme == "bearer" and params.get("realm"):
                self._authorization = "Bearer " + self._token(params)
            else:
                raise RboxError(f"the registry {self.where} asks for an authentication rbox does not know "
                                f"(`{log.printable(scheme)[:40]}`)",
                                hint="rbox speaks the Bearer token flow and Basic authentication")

    def _token(self, params: dict[str, str]) -> str:
        """A token from the realm (the distribution token spec): GET with service and
        scope, the user's credentials as Basic when given."""
        origin, target = self._url(params["realm"], "the token service")
        query = [(k, params[k]) for k in ("service",) if params.get(k)]
        query += [("scope", s) for s in (params.get("scope") or f"repository:{self.ref.repo}:pull").split(" ")]
        target += ("&" if "?" in target else "?") + urllib.parse.urlencode(query)
        headers = {"User-Agent": f"rbox/{__version__}", "Accept-Encoding": "identity"}
        if self.creds is not None:
            raw = f"{self.creds[0]}:{self.creds[1]}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        log.step(f"GET {origin[0]}://{_hostport(origin)}{target.partition('?')[0]} (token for {self.ref.repo})")
        response = self._request(origin, target, headers)
        body = response.read(1 << 20)
        if response.status in (401, 403):
            raise self._denied()
        if response.status != 200:
            raise RboxError(f"the token service of {self.where} answered {response.status} {response.reason}",
                            hint="try again later; if it persists, tell the registry's operator")
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        token = answer.get("token") or answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise RboxError(f"the token service of {self.where} gave no token",
                            hint="the registry is misconfigured; tell its operator")
        return token

    def _denied(self, refused_token: bool = False) -> RboxError:
        what = f"{self.ref.repo} on {self.where}"
        if self.creds is None:
            return RboxError(f"the registry refused access to {what} (401): it needs credentials",
                             hint="pass --creds USER (password from $RBOX_REGISTRY_PASSWORD or the terminal); "
                                  "check the repository's name too: some registries answer 401 for one that "
                                  "does not exist")
        if refused_token:
            return RboxError(f"the registry refused access to {what} with your credentials (401)",
                             hint="check that your account may pull this repository")
        return RboxError(f"the registry refused your credentials for {what}",
                         hint="check the user name and password given with --creds")

    # --- the API -------------------------------------------------------------------

    def manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(body, media type, digest) of /v2/REPO/manifests/REFERENCE; the digest
        verified when REFERENCE is one."""
        response = self.get(f"/v2/{self.ref.repo}/manifests/{reference}",
                            {"Accept": ", ".join(registry.MANIFEST + registry.INDEX)})
        body = response.read(MAX_MANIFEST + 1)
        if response.status == 404:
            raise RboxError(f"no image `{self.ref.repo}:{reference}` on {self.where}" if not
                            reference.startswith("sha256:") else f"no manifest {reference} in {self.ref.repo} on "
                            f"{self.where}", hint="check the repository and tag (`skopeo list-tags "
                                                   f"docker://{self.where}/{self.ref.repo}` lists the tags)")
        if response.status != 200:
            raise self._status(response, "the manifest")
        if len(body) > MAX_MANIFEST:
            raise bad_manifest(f"larger than {MAX_MANIFEST >> 20} MiB")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RboxError(f"the manifest {self.where} served for {reference} has digest {digest}",
                            hint="the registry, or something between it and you, changed the data; nothing "
                                 "was kept")
        media = (response.getheader("Content-Type") or "").split(";")[0].strip()
        return body, media, digest

    def resolve(self) -> Image:
        """The image the reference names, for this host's platform."""
        body, media, digest = self.manifest(self.ref.reference)
        chosen = ""
        for _ in range(2):
            manifest = registry.manifest_json(body)
            media = str(manifest.get("mediaType") or media)
            if media in registry.SCHEMA1 or manifest.get("schemaVersion") == 1:
                raise RboxError(f"{self.ref.shown} has an old Docker schema 1 manifest, which rbox does not read",
                                hint="convert it: skopeo copy --format v2s2 (or push it again with a current "
                                     "docker)")
            if media in registry.INDEX or (not media and "manifests" in manifest):
                listed = manifest.get("manifests")
                entries = [m for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
                entry = registry.pick_platform(entries, registry.host_platform())
                chosen = registry.platform_text(entry.get("platform"))
                body, media, digest = self.manifest(registry.descriptor(entry, "platform's manifest").digest)
                continue
            if media not in registry.MANIFEST and media:
                raise RboxError(f"{self.ref.shown} is of media type `{log.printable(media)[:80]}`, not a "
                                "container image", hint="rbox pulls OCI and Docker v2 images")
            config = registry.descriptor(manifest.get("config"), "config")
            if config.media not in ("", *registry.CONFIGS):
                raise RboxError(f"{self.ref.shown} is not a container image (its config is of type "
                                f"`{log.printable(config.media)[:80]}`)",
                                hint="rbox pulls OCI and Docker v2 container images, not other artifacts")
            layers = manifest.get("layers")
            if not isinstance(layers, list):
                raise bad_manifest("it has no list of layers")
            checked = [registry.descriptor(layer, "layer") for layer in layers]
            for layer in checked:
                if layer.media not in registry.LAYERS:
                    raise RboxError(f"{self.ref.shown} has a layer of media type "
                                    f"`{log.printable(layer.media)[:80]}`, which rbox cannot unpack",
                                    hint="rbox unpacks tar layers (plain, gzip, zstd); foreign layers are not "
                                         "fetched")
            return Image(digest, config, checked, chosen)
        raise bad_manifest("an index of indexes")

    def blob(self, digest: str, offset: int) -> tuple[int, BufferedIOBase]:
        """The blob from `offset` (HTTP Range): (where the stream starts, the stream).
        A server that ignores the range answers 200 with the whole blob: start 0."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self.get(f"/v2/{self.ref.repo}/blobs/{digest}", headers)
        if response.status == 206 and offset:
            start = (response.getheader("Content-Range") or "").removeprefix("bytes ").partition("-")[0]
            if start.isdigit() and int(start) == offset:
                return offset, response
            response.read()
            return self.blob(digest, 0)
        if response.status == 416 and offset:
            response.read()
            return self.blob(digest, 0)
        if response.status == 404:
            raise RboxError(f"the registry {self.where} has no blob {digest} of {self.ref.repo}",
                            hint="the image is incomplete on the registry; push it again")
        if response.status != 200:
            raise self._status(response, f"blob {digest[:19]}")
        return 0, response

    def _status(self, response: http.client.HTTPResponse, what: str) -> RboxError:
        code = ""
        try:
            errors = json.loads(response.read(1 << 16)).get("errors") or []
            code = str(errors[0].get("code"))[:60] if errors and isinstance(errors[0], dict) else ""
        except (ValueError, AttributeError, OSError, http.client.HTTPException):
            pass
        return RboxError(f"the registry {self.where} answered {response.status} {response.reason} for {what}"
                         + (f" ({log.printable(code)})" if code else ""),
                         hint="try again later; if it persists, tell the registry's operator")


def _hostport(origin: tuple[str, str, int]) -> str:
    scheme, hostname, port = origin
    name = f"[{hostname}]" if ":" in hostname else hostname
    return name if port == (443 if scheme == "https" else 80) else f"{name}:{port}"



"""A client of the OCI distribution API (a registry's /v2/), with the standard library only.

Runs in: parent, for `rbox image pull` alone: command.py imports this module only then,
so http.client, ssl, socket and threading never load on rbox's start-up path.

What it does, in the order of a pull:
- parse a reference as docker does (`[SCHEME://]HOST[:PORT]/REPO[:TAG][@sha256:HEX]`;
  without a host, Docker Hub; the scheme is rbox's own addition, to ask for http);
- refuse plain http, before any connection, unless the host is a loopback address or
  the user said --insecure: a registry's answers are verified by digest, but a token or
  a password sent in clear is not (the same rule for redirects and a token realm);
- authenticate as the registry asks: on 401, `WWW-Authenticate: Bearer realm=...,
  service=...,scope=...` sends us to the realm for a token (with the user's credentials
  as HTTP Basic when given), then the request is retried with `Authorization: Bearer`;
  a `Basic` challenge takes the credentials directly. The token and the credentials are
  sent only to the origin that asked for them (a redirect elsewhere, such as a storage
  service's signed URL, goes without), and are never printed;
- fetch the manifest (Docker v2 schema 2 or OCI; a manifest list or OCI index picks
  this host's os/architecture/variant), checked against the digest when the reference
  names one;
- open blobs at an offset (HTTP Range) so that blobs.py can resume an interrupted one.
Each thread keeps its own connections (http.client is not thread-safe).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import json
import platform
import socket
import ssl
import threading
import urllib.parse
from io import BufferedIOBase

from rootless import __version__, log
from rootless.errors import RboxError

DOCKER_HUB = "registry-1.docker.io"
MANIFEST = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")
INDEX = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
           "application/vnd.docker.distribution.manifest.v1+prettyjws")
CONFIGS = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")
LAYERS = ("application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip",
          "application/vnd.oci.image.layer.v1.tar+zstd", "application/vnd.docker.image.rootfs.diff.tar.gzip",
          "application/vnd.docker.image.rootfs.diff.tar")
MAX_MANIFEST = 4 << 20          # the distribution spec's suggested limit for manifests
TIMEOUT = 30.0                  # seconds without a byte before a request fails
HINT_REF = "write HOST[:PORT]/REPOSITORY[:TAG] or ...@sha256:DIGEST, e.g. 127.0.0.1:5000/tools/app:1.0"
GOARCH = {"x86_64": ("amd64", ""), "aarch64": ("arm64", "v8"), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
          "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", ""), "i686": ("386", "")}


class Ref:
    """A parsed reference: where (scheme or None, host as in a URL), what (repo, tag or
    digest). `shown` is the canonical text (recorded as the image's source)."""

    def __init__(self, scheme: str | None, host: str, repo: str, tag: str | None, digest: str | None):
        self.scheme, self.host, self.repo, self.tag, self.digest = scheme, host, repo, tag, digest
        name = "docker.io" if host == DOCKER_HUB else host
        self.shown = f"{name}/{repo}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")

    @property
    def reference(self) -> str:
        """What /v2/REPO/manifests/ takes: the digest when given (it pins the image)."""
        return self.digest or self.tag or "latest"


def bad_ref(text: str, why: str) -> RboxError:
    return RboxError(f"invalid image reference `{log.printable(text)[:200]}`: {why}", hint=HINT_REF)


def _repo_ok(repo: str) -> bool:
    """The distribution spec's repository grammar: lowercase components of [a-z0-9]
    joined by `.`, `_`, `__` or `-`s, separated by `/`."""
    for part in repo.split("/"):
        if not part or not part[0].isalnum() or not part[-1].isalnum():
            return False
        if not set(part) <= set("abcdefghijklmnopqrstuvwxyz0123456789._-"):
            return False
    return True


def parse_ref(text: str) -> Ref:
    scheme: str | None = None
    rest = text
    for prefix in ("http://", "https://"):
        if rest.startswith(prefix):
            scheme, rest = prefix[:-3], rest[len(prefix):]
    digest = None
    if "@" in rest:
        rest, digest = rest.rsplit("@", 1)
        algo, _, hexa = digest.partition(":")
        if algo != "sha256" or len(hexa) != 64 or not set(hexa) <= set("0123456789abcdef"):
            raise bad_ref(text, "the digest is not sha256:<64 hex digits> (rbox verifies sha256 only)")
    first, slash, remainder = rest.partition("/")
    if slash and (any(c in first for c in ".:[") or first == "localhost"):
        host, path = first, remainder
    elif scheme is not None:
        raise bad_ref(text, "a scheme needs a registry host")
    else:
        host, path = DOCKER_HUB, rest
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
        if not tag or len(tag) > 128 or not (tag[0].isalnum() or tag[0] == "_") or \
                not set(tag) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"):
            raise bad_ref(text, f"invalid tag `{log.printable(tag)[:130]}`")
    if host == DOCKER_HUB and "/" not in path:
        path = "library/" + path           # Docker Hub's official images
    if not path or not _repo_ok(path):
        raise bad_ref(text, "the repository must be lowercase letters, digits and `._-`, in `/`-separated parts")
    _split_host(text, host)
    return Ref(scheme, host, path, tag if tag or digest else "latest", digest)


def _split_host(text: str, host: str) -> tuple[str, int | None]:
    """(hostname, port or None) of `host` as written in a reference or a URL."""
    name, port = host, ""
    if host.startswith("["):
        name, _, after = host[1:].partition("]")
        if after and not after.startswith(":"):
            raise bad_ref(text, f"invalid registry host `{log.printable(host)}`")
        port = after[1:]
    elif ":" in host:
        name, port = host.rsplit(":", 1)
    if not name or (port and (not port.isdigit() or not 0 < int(port) < 65536)):
        raise bad_ref(text, f"invalid registry host `{log.printable(host)}`")
    return name, int(port) if port else None


def default_name(ref: Ref) -> str:
    """The image's name when none is given: the repository's last component, with
    `-TAG` unless the tag is `latest`, or `-` and 12 digits of a digest."""
    name = ref.repo.rsplit("/", 1)[-1]
    if ref.digest:
        return f"{name}-{ref.digest[7:19]}"
    return name if ref.tag in (None, "latest") else f"{name}-{ref.tag}"


def is_loopback(hostname: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`: traffic that never leaves this machine."""
    if hostname.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def check_scheme(scheme: str, hostname: str, insecure: bool, what: str) -> None:
    """Plain http only to a loopback address, or when the user accepted it (--insecure).
    Called before each connection is made: for the registry, a redirect, a token realm."""
    if scheme == "http" and not insecure and not is_loopback(hostname):
        raise RboxError(f"refusing plain http to {what} `{log.printable(hostname)}`: only a registry on this "
                        "machine (127.0.0.0/8, ::1, localhost) is reached without TLS",
                        hint="use https, or pass --insecure if you accept that the traffic (and any token or "
                             "password) can be read and changed on the way")
    if scheme not in ("http", "https"):
        raise RboxError(f"unsupported URL scheme `{log.printable(scheme)}` for {what}",
                        hint="a registry is reached over https (or http on this machine)")


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="x",service="y"` -> ("bearer", {"realm": "x", "service": "y"})
    (RFC 7235's auth-param list: quoted strings may hold commas and escapes)."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i = 0
    while i < len(rest):
        while i < len(rest) and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        value = ""
        if i < len(rest) and rest[i] == '"':
            i += 1
            while i < len(rest) and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < len(rest):
                    i += 1
                value += rest[i]
                i += 1
            i += 1
        else:
            end = rest.find(",", i)
            end = len(rest) if end < 0 else end
            value, i = rest[i:end].strip(), end
        params[key] = value
    return scheme.lower(), params


def host_platform() -> tuple[str, str, str]:
    """(os, architecture, variant) as image indexes name them (GOOS/GOARCH)."""
    machine = platform.machine()
    arch, variant = GOARCH.get(machine, (machine, ""))
    return "linux", arch, variant


def pick_platform(manifests: list[dict[str, object]], want: tuple[str, str, str]) -> dict[str, object]:
    """The entry of an index for `want`; a missing variant matches (arm64 images often
    omit v8), an exact one wins."""
    os_, arch, variant = want
    found = []
    for m in manifests:
        p = m.get("platform")
        if isinstance(p, dict) and p.get("os") == os_ and p.get("architecture") == arch:
            got = p.get("variant") or ""
            if got == variant:
                return m
            if not got or not variant:
                found.append(m)
    if found:
        return found[0]
    available = sorted({_platform_text(m.get("platform")) for m in manifests})
    here = _platform_text({"os": os_, "architecture": arch, "variant": variant})
    raise RboxError(f"the image has no variant for this host ({here}); it has: {', '.join(available) or 'none'}",
                    hint="pull an image built for this host's platform, or pin one by its digest (@sha256:...)")


def _platform_text(p: object) -> str:
    if not isinstance(p, dict):
        return "?"
    text = f"{p.get('os')}/{p.get('architecture')}"
    return text + (f"/{p['variant']}" if p.get("variant") else "")


class Desc:
    """A blob descriptor: digest (sha256, the only one verified), size, media type."""

    def __init__(self, digest: str, size: int, media: str):
        self.digest, self.size, self.media = digest, size, media


class Image:
    """What a pull resolves a reference to: the manifest's digest, the config's and the
    layers' descriptors, and the platform picked from an index (else "")."""

    def __init__(self, digest: str, config: Desc, layers: list[Desc], platform: str):
        self.digest, self.config, self.layers, self.platform = digest, config, layers, platform


def descriptor(value: object, what: str) -> Desc:
    """A descriptor of the manifest, checked for what this client relies on."""
    if not isinstance(value, dict):
        raise _bad_manifest(f"its {what} is not a descriptor")
    digest, size, media = value.get("digest"), value.get("size"), value.get("mediaType")
    algo, _, hexa = str(digest).partition(":")
    if algo != "sha256" or len(hexa) != 64 or not set(hexa) <= set("0123456789abcdef"):
        raise RboxError(f"the {what} has digest `{log.printable(str(digest))[:80]}`, and rbox verifies sha256 only",
                        hint="pull an image whose blobs are named by sha256 digests")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad_manifest(f"its {what} has no valid size")
    return Desc(str(digest), size, media if isinstance(media, str) else "")


def _bad_manifest(why: str) -> RboxError:
    return RboxError(f"the registry's manifest is invalid: {why}",
                     hint="the image may be damaged or not a container image; check it with `skopeo inspect`")


class Client:
    """Requests to one registry for one repository, from any thread."""

    def __init__(self, ref: Ref, insecure: bool, creds: tuple[str, str] | None):
        self.ref, self.insecure, self.creds = ref, insecure, creds
        hostname, port = _split_host(ref.shown, ref.host)
        self.scheme = ref.scheme or ("http" if insecure or is_loopback(hostname) else "https")
        # Before any connection: a reference that asks for plain http off this machine.
        check_scheme(self.scheme, hostname, insecure, "the registry")
        self.origin = (self.scheme, hostname, port or (443 if self.scheme == "https" else 80))
        self.where = ref.host if ref.host != DOCKER_HUB else "docker.io"
        self._local = threading.local()
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
        return conn

    def close(self) -> None:
        for conn in (getattr(self._local, "conns", None) or {}).values():
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
        url = urllib.parse.urlsplit(urllib.parse.urljoin(base, location))
        if not url.hostname:
            raise RboxError(f"the registry {self.where} redirects to an invalid address",
                            hint="the registry is misconfigured; tell its operator")
        check_scheme(url.scheme, url.hostname, self.insecure, "a redirect to")
        port = url.port or (443 if url.scheme == "https" else 80)
        return (url.scheme, url.hostname, port), (url.path or "/") + (f"?{url.query}" if url.query else "")

    def _authenticate(self, challenge: str) -> None:
        scheme, params = parse_challenge(challenge)
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
        realm = urllib.parse.urlsplit(params["realm"])
        if not realm.hostname:
            raise RboxError(f"the registry {self.where} names an invalid token service",
                            hint="the registry is misconfigured; tell its operator")
        check_scheme(realm.scheme, realm.hostname, self.insecure, "the token service")
        query = [(k, params[k]) for k in ("service",) if params.get(k)]
        query += [("scope", s) for s in (params.get("scope") or f"repository:{self.ref.repo}:pull").split(" ")]
        target = (realm.path or "/") + "?" + ("&".join(filter(None, [realm.query])) + "&" if realm.query else "") \
            + urllib.parse.urlencode(query)
        headers = {"User-Agent": f"rbox/{__version__}", "Accept-Encoding": "identity"}
        if self.creds is not None:
            raw = f"{self.creds[0]}:{self.creds[1]}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        origin = (realm.scheme, realm.hostname, realm.port or (443 if realm.scheme == "https" else 80))
        log.step(f"GET {realm.scheme}://{_hostport(origin)}{realm.path} (token for {self.ref.repo})")
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
                            {"Accept": ", ".join(MANIFEST + INDEX)})
        body = response.read(MAX_MANIFEST + 1)
        if response.status == 404:
            raise RboxError(f"no image `{self.ref.repo}:{reference}` on {self.where}" if not
                            reference.startswith("sha256:") else f"no manifest {reference} in {self.ref.repo} on "
                            f"{self.where}", hint="check the repository and tag (`skopeo list-tags "
                                                   f"docker://{self.where}/{self.ref.repo}` lists the tags)")
        if response.status != 200:
            raise self._status(response, "the manifest")
        if len(body) > MAX_MANIFEST:
            raise _bad_manifest(f"larger than {MAX_MANIFEST >> 20} MiB")
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
            manifest = _json(body)
            media = str(manifest.get("mediaType") or media)
            if media in SCHEMA1 or manifest.get("schemaVersion") == 1:
                raise RboxError(f"{self.ref.shown} has an old Docker schema 1 manifest, which rbox does not read",
                                hint="convert it: skopeo copy --format v2s2 (or push it again with a current "
                                     "docker)")
            if media in INDEX or (not media and "manifests" in manifest):
                listed = manifest.get("manifests")
                entries = [m for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
                entry = pick_platform(entries, host_platform())
                chosen = _platform_text(entry.get("platform"))
                body, media, digest = self.manifest(descriptor(entry, "platform's manifest").digest)
                continue
            if media not in MANIFEST and media:
                raise RboxError(f"{self.ref.shown} is of media type `{log.printable(media)[:80]}`, not a "
                                "container image", hint="rbox pulls OCI and Docker v2 images")
            config = descriptor(manifest.get("config"), "config")
            if config.media not in ("", *CONFIGS):
                raise RboxError(f"{self.ref.shown} is not a container image (its config is of type "
                                f"`{log.printable(config.media)[:80]}`)",
                                hint="rbox pulls OCI and Docker v2 container images, not other artifacts")
            layers = manifest.get("layers")
            if not isinstance(layers, list):
                raise _bad_manifest("it has no list of layers")
            checked = [descriptor(layer, "layer") for layer in layers]
            for layer in checked:
                if layer.media not in LAYERS:
                    raise RboxError(f"{self.ref.shown} has a layer of media type "
                                    f"`{log.printable(layer.media)[:80]}`, which rbox cannot unpack",
                                    hint="rbox unpacks tar layers (plain, gzip, zstd); foreign layers are not "
                                         "fetched")
            return Image(digest, config, checked, chosen)
        raise _bad_manifest("an index of indexes")

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


def _json(body: bytes) -> dict[str, object]:
    try:
        value = json.loads(body)
    except ValueError as e:
        raise _bad_manifest(f"not JSON ({e})") from None
    if not isinstance(value, dict):
        raise _bad_manifest("not a JSON object")
    return value


"""Image references and what the registry's answers must be, for `rbox image pull`:
parsing a reference as docker does, the rule for plain http, WWW-Authenticate
challenges, picking this host's platform from an index, manifest descriptors.

Runs in: parent. Pure logic, and imports only when needed (ipaddress, json, platform):
`rbox image pull` parses the reference and applies the http rule with this module
before it starts the unpacking sandbox, and everything it imports before that fork
delays the sandbox; the HTTP client (client.py, with http.client and ssl) is imported
only after it, so that the two overlap.

A reference is `[SCHEME://]HOST[:PORT]/REPO[:TAG][@sha256:HEX]`; without a host (no `.`
or `:` in the first component, not `localhost`), Docker Hub; the scheme is rbox's own
addition, to ask for http. Plain http is refused, before any connection, unless the
host is a loopback address or the user said --insecure: a registry's answers are
verified by digest, but a token or a password sent in clear is not (the same rule for
redirects and a token realm, client.py).
"""

from __future__ import annotations

from rootless import log
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
    split_host(text, host)
    return Ref(scheme, host, path, tag if tag or digest else "latest", digest)


def split_host(text: str, host: str) -> tuple[str, int | None]:
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
    import ipaddress

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


def origin(ref: Ref, insecure: bool) -> tuple[str, str, int]:
    """(scheme, host name, port) of the registry: the reference's scheme, else http on
    this machine or with --insecure, else https; plain http elsewhere refused here,
    before anything is started or connected."""
    hostname, port = split_host(ref.shown, ref.host)
    scheme = ref.scheme or ("http" if insecure or is_loopback(hostname) else "https")
    check_scheme(scheme, hostname, insecure, "the registry")
    return scheme, hostname, port or (443 if scheme == "https" else 80)


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
    import platform

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
    available = sorted({platform_text(m.get("platform")) for m in manifests})
    here = platform_text({"os": os_, "architecture": arch, "variant": variant})
    raise RboxError(f"the image has no variant for this host ({here}); it has: {', '.join(available) or 'none'}",
                    hint="pull an image built for this host's platform, or pin one by its digest (@sha256:...)")


def platform_text(p: object) -> str:
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
        raise bad_manifest(f"its {what} is not a descriptor")
    digest, size, media = value.get("digest"), value.get("size"), value.get("mediaType")
    algo, _, hexa = str(digest).partition(":")
    if algo != "sha256" or len(hexa) != 64 or not set(hexa) <= set("0123456789abcdef"):
        raise RboxError(f"the {what} has digest `{log.printable(str(digest))[:80]}`, and rbox verifies sha256 only",
                        hint="pull an image whose blobs are named by sha256 digests")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise bad_manifest(f"its {what} has no valid size")
    return Desc(str(digest), size, media if isinstance(media, str) else "")


def bad_manifest(why: str) -> RboxError:
    return RboxError(f"the registry's manifest is invalid: {why}",
                     hint="the image may be damaged or not a container image; check it with `skopeo inspect`")


def manifest_json(body: bytes) -> dict[str, object]:
    import json

    try:
        value = json.loads(body)
    except ValueError as e:
        raise bad_manifest(f"not JSON ({e})") from None
    if not isinstance(value, dict):
        raise bad_manifest("not a JSON object")
    return value


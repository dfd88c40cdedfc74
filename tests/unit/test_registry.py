"""The pure logic of `rbox image pull` (rootless/image/registry.py, blobs.py, progress.py):
references, default names, the choice of scheme, challenges, platforms. No connection
is made here."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from rootless.errors import RboxError
from rootless.image import registry
from rootless.image.blobs import Blobs
from rootless.image.progress import Progress

HEX = "ab" * 32


@pytest.mark.parametrize(("text", "host", "repo", "tag", "digest", "shown"), [
    ("busybox", "registry-1.docker.io", "library/busybox", "latest", None, "docker.io/library/busybox:latest"),
    ("alice/tool:1.2", "registry-1.docker.io", "alice/tool", "1.2", None, "docker.io/alice/tool:1.2"),
    ("127.0.0.1:5000/a/b/c:v_1", "127.0.0.1:5000", "a/b/c", "v_1", None, "127.0.0.1:5000/a/b/c:v_1"),
    ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest"),
    ("[::1]:5000/app@sha256:" + HEX, "[::1]:5000", "app", None, "sha256:" + HEX, "[::1]:5000/app@sha256:" + HEX),
    ("reg.example:443/app:1@sha256:" + HEX, "reg.example:443", "app", "1", "sha256:" + HEX,
     "reg.example:443/app:1@sha256:" + HEX),
    ("http://127.0.0.1:5000/app", "127.0.0.1:5000", "app", "latest", None, "127.0.0.1:5000/app:latest"),
])
def test_references(text: str, host: str, repo: str, tag: str | None, digest: str | None, shown: str) -> None:
    ref = registry.parse_ref(text)
    assert (ref.host, ref.repo, ref.tag, ref.digest, ref.shown) == (host, repo, tag, digest, shown)
    assert ref.scheme == ("http" if text.startswith("http://") else None)


@pytest.mark.parametrize(("text", "why"), [
    ("Alice/Tool", "the repository must be lowercase"),
    ("127.0.0.1:5000/app:", "invalid tag"),
    ("127.0.0.1:5000/app:-x", "invalid tag"),
    ("app@sha512:" + HEX, "the digest is not sha256"),
    ("app@sha256:abc", "the digest is not sha256"),
    ("127.0.0.1:99999/app", "invalid registry host"),
    ("127.0.0.1:5000/", "the repository must be"),
    ("http://app", "a scheme needs a registry host"),
    ("127.0.0.1:5000/a//b", "the repository must be"),
    ("127.0.0.1:5000/../b", "the repository must be"),
])
def test_invalid_references(text: str, why: str) -> None:
    with pytest.raises(RboxError) as e:
        registry.parse_ref(text)
    assert why in e.value.message and e.value.hint


@pytest.mark.parametrize(("text", "name"), [
    ("busybox", "busybox"), ("busybox:latest", "busybox"), ("127.0.0.1:5000/tools/gcc:13.2", "gcc-13.2"),
    (f"app@sha256:{HEX}", "app-" + HEX[:12]), (f"app:1@sha256:{HEX}", "app-" + HEX[:12]),
])
def test_default_names(text: str, name: str) -> None:
    assert registry.default_name(registry.parse_ref(text)) == name


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.3.4.5", True), ("::1", True), ("localhost", True), ("LOCALHOST", True),
    ("128.0.0.1", False), ("192.0.2.1", False), ("::2", False), ("localhost.example", False), ("10.0.2.2", False),
])
def test_loopback(host: str, loopback: bool) -> None:
    assert registry.is_loopback(host) is loopback


@pytest.mark.parametrize(("text", "insecure", "scheme"), [
    ("127.0.0.1:5000/a", False, "http"), ("localhost:5000/a", False, "http"), ("[::1]:5000/a", False, "http"),
    ("reg.example/a", False, "https"), ("192.0.2.1:5000/a", False, "https"), ("192.0.2.1:5000/a", True, "http"),
    ("https://127.0.0.1:5000/a", False, "https"), ("http://192.0.2.1/a", True, "http"),
])
def test_scheme(text: str, insecure: bool, scheme: str) -> None:
    assert registry.origin(registry.parse_ref(text), insecure)[0] == scheme


def test_plain_http_off_this_machine_needs_insecure() -> None:
    with pytest.raises(RboxError) as e:
        registry.origin(registry.parse_ref("http://192.0.2.1/a"), False)
    assert "refusing plain http to the registry `192.0.2.1`" in e.value.message
    with pytest.raises(RboxError):
        registry.check_scheme("ftp", "127.0.0.1", True, "a redirect to")
    registry.check_scheme("http", "127.0.0.1", False, "a redirect to")      # loopback: fine


def test_challenges() -> None:
    assert registry.parse_challenge('Bearer realm="https://auth.example/token",service="reg",'
                                    'scope="repository:a/b:pull"') == (
        "bearer", {"realm": "https://auth.example/token", "service": "reg", "scope": "repository:a/b:pull"})
    assert registry.parse_challenge('Basic realm="a, \\"quoted\\" realm"') == ("basic", {"realm": 'a, "quoted" realm'})
    assert registry.parse_challenge("Bearer realm=plain, service=x") == ("bearer", {"realm": "plain", "service": "x"})
    assert registry.parse_challenge("") == ("", {})


def entry(arch: str, variant: str = "", os_: str = "linux") -> dict[str, object]:
    platform = {"os": os_, "architecture": arch, **({"variant": variant} if variant else {})}
    return {"digest": f"sha256:{arch}{variant}", "platform": platform}


def test_platforms() -> None:
    listed = [entry("amd64", os_="windows"), entry("arm", "v7"), entry("arm64", "v8"), entry("amd64")]
    assert registry.pick_platform(listed, ("linux", "amd64", ""))["digest"] == "sha256:amd64"
    assert registry.pick_platform(listed, ("linux", "arm64", "v8"))["digest"] == "sha256:arm64v8"
    # An arm64 image without a variant is the host's (v8 is the only one); an exact one wins.
    assert registry.pick_platform([entry("arm64")], ("linux", "arm64", "v8"))["digest"] == "sha256:arm64"
    assert registry.pick_platform([entry("arm64"), entry("arm64", "v8")],
                                  ("linux", "arm64", "v8"))["digest"] == "sha256:arm64v8"
    with pytest.raises(RboxError) as e:
        registry.pick_platform(listed, ("linux", "arm", "v6"))
    assert e.value.message == ("the image has no variant for this host (linux/arm/v6); it has: linux/amd64, "
                               "linux/arm/v7, linux/arm64/v8, windows/amd64")


def test_descriptors_need_a_sha256_digest_and_a_size() -> None:
    good = {"digest": "sha256:" + HEX, "size": 3, "mediaType": "x"}
    assert registry.descriptor(good, "layer").size == 3
    for bad in ({**good, "digest": "sha512:" + HEX}, {**good, "size": -1}, {**good, "size": True}, "text"):
        with pytest.raises(RboxError):
            registry.descriptor(bad, "layer")


class Stream(io.BytesIO):
    def read1(self, n: int = -1) -> bytes:
        return super().read1(min(n, 3) if n > 0 else 3)       # a trickle, as a network gives


def test_a_blob_is_kept_only_when_its_digest_matches(tmp_path: Path) -> None:
    """The digest check itself, without a registry: right bytes kept, wrong ones not,
    and a partial file continued from where it ends."""
    import hashlib

    data = b"layer bytes"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    os.makedirs(tmp_path / "locks")
    blobs = Blobs(str(tmp_path))
    asked: list[int] = []

    def opener(served: bytes):  # type: ignore[no-untyped-def]
        def open_at(at: int) -> tuple[int, Stream]:
            asked.append(at)
            return at, Stream(served[at:])
        return open_at

    with pytest.raises(RboxError) as e:
        blobs.fetch(digest, len(data), opener(b"LAYER BYTES"), lambda n, f: None, lambda: False, "here")
    assert "does not match its digest" in e.value.message
    assert not blobs.has(digest) and os.listdir(tmp_path / "blobs/partial") == []
    (tmp_path / "blobs/partial" / digest[7:]).write_bytes(data[:5])         # what a killed pull left
    assert blobs.fetch(digest, len(data), opener(data), lambda n, f: None, lambda: False, "here") is False
    assert asked[-1] == 5 and Path(blobs.path(digest)).read_bytes() == data
    assert blobs.fetch(digest, len(data), opener(b""), lambda n, f: None, lambda: False, "here") is True
    # A server that ignores the range sends it all from 0: the partial file starts over.
    other = b"another layer"
    other_digest = "sha256:" + hashlib.sha256(other).hexdigest()
    (tmp_path / "blobs/partial" / other_digest[7:]).write_bytes(b"junk!")
    assert blobs.fetch(other_digest, len(other), lambda at: (0, Stream(other)), lambda n, f: None, lambda: False,
                       "here") is False
    assert Path(blobs.path(other_digest)).read_bytes() == other
    os.unlink(blobs.path(other_digest))
    assert blobs.collect({digest}) == 0 and blobs.collect(set()) == 1 and not blobs.has(digest)


def test_progress_line() -> None:
    p = Progress(False)
    p.phase("pulling", 3, 3 << 20)
    p.add(1 << 20)
    p.layer_done(cached=True)
    assert p.line().startswith("pulling    1/3 layers (1 cached)  1.0 MiB/3.0 MiB")
    p.phase("reading", 0)
    assert p.line() == "reading    0 B"

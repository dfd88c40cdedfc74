"""`rbox image pull` from a real registry on loopback: Debian's docker-registry, started
here with a config of the test's own, one instance anonymous and one asking for Bearer
tokens from a token server of the test's own; the images built here (busybox-static
and generated layers) and pushed with skopeo. A proxy in front counts requests and
changes, stalls or redirects what a test tells it to (tests/integration/registry.py).
No traffic leaves the machine: the one test that names another address (192.0.2.1, a
documentation address) blocks every connection that is not to loopback.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import registry as reg
from tests.integration.helpers import RBOX, live_processes, rbox_env, run_rbox, start_rbox, wait_until
from tests.integration.registry import GOARCH, Layout, Proxy, Registry, TokenServer, get, push, sha, tar_layer

pytestmark = [pytest.mark.needs_userns, pytest.mark.needs_registry]

CONFIG = {"Env": ["PATH=/bin", "IMAGE_VAR=from-image"], "Entrypoint": ["/bin/sh", "-c"],
          "Cmd": ["cat /etc/motd; echo $IMAGE_VAR; pwd"], "WorkingDir": "/work"}
HOST_ARCH = GOARCH.get(platform.machine(), platform.machine())
OTHER_ARCHES = [a for a in ("s390x", "ppc64le", "riscv64") if a != HOST_ARCH][:2]
STALL_AT = 600_000          # bytes of the slow layer sent before the proxy stalls


def busybox_layer() -> bytes:
    files: dict[str, bytes | str] = {"bin/": b"", "bin/busybox": Path("/bin/busybox").read_bytes(),
                                     "etc/": b"", "etc/os-release": b"ID=rbox-pulled\n"}
    for applet in ("sh", "cat", "echo", "pwd", "ls"):
        files[f"bin/{applet}"] = "busybox"
    return tar_layer(files, gz=True)


class World:
    """The registries, the token server and the images, for the whole module."""

    def __init__(self, top: Path):
        assert shutil.which("skopeo") and os.path.exists("/bin/busybox")
        self.servers: list[Registry | TokenServer] = []
        try:
            self._start(top)
        except BaseException:
            self.stop()         # a failed setup leaves no server running
            raise

    def _start(self, top: Path) -> None:
        self.tokens = TokenServer(top)
        self.servers.append(self.tokens)
        storage = top / "storage"
        self.registry = Registry(top / "anon", storage)
        self.servers.append(self.registry)
        self.auth = Registry(top / "auth", storage, (self.tokens.realm, self.tokens.cert))
        self.servers.append(self.auth)
        self.layout = layout = Layout(top / "layout")
        rand = os.urandom
        self.top_layer = tar_layer({"etc/": b"", "etc/motd": b"good\n", "work/": b""})
        self.evil_top = tar_layer({"etc/": b"", "etc/motd": b"evil\n", "work/": b""})
        bb = busybox_layer()
        self.slow_data = rand(1_200_000)
        images = {
            "base": layout.manifest([bb, self.top_layer], CONFIG),
            "shared": layout.manifest([bb, tar_layer({"etc/": b"", "etc/other": b"other\n"})], CONFIG),
            "three": layout.manifest([tar_layer({"slow": self.slow_data}), tar_layer({"a": rand(200_000)}),
                                      tar_layer({"b": rand(200_000)})], {}),
        }
        arch_images = {arch: layout.manifest([tar_layer({"etc/": b"", "etc/arch": arch.encode()})], {}, arch)
                       for arch in (HOST_ARCH, *OTHER_ARCHES)}
        images["multi"] = layout.index([(arch_images[a], a) for a in (OTHER_ARCHES[0], HOST_ARCH)])
        images["foreign"] = layout.index([(arch_images[a], a) for a in OTHER_ARCHES])
        for name, described in images.items():
            layout.tag(name, described)
        for name in images:
            push(layout.top, name, self.registry, f"rbox/{name}:v1", every=name in ("multi", "foreign"))
        # base's blobs in rbox/shared too: a manifest swapped for base's would pull there.
        push(layout.top, "base", self.registry, "rbox/shared:base")
        # What the registry serves, read here (skopeo may re-serialize manifests).
        self.digest, self.manifests = {}, {}
        for name in images:
            self.digest[name], self.manifests[name] = self.registry.manifest(f"rbox/{name}", "v1")
        self.layers = {name: [str(d["digest"]) for d in self.manifests[name].get("layers", [])]  # type: ignore[attr-defined]
                       for name in images}

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("registry"))
    yield w
    w.stop()


@pytest.fixture
def proxy(world: World) -> Iterator[Proxy]:
    p = Proxy(world.registry.port)
    yield p
    p.stop()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"RBOX_STORAGE": str(tmp_path / "store")}


def pull(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_rbox("image", "pull", *args, env=env, cwd=cwd)


def inspected(name: str, env: dict[str, str], cwd: Path) -> dict[str, object]:
    r = run_rbox("image", "inspect", name, "--json", env=env, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def store_is_clean(tmp_path: Path) -> None:
    """Nothing half-made: no image, no staging directory, no partial download left
    that is not the resumable kind (partial/ may hold one only after a kill)."""
    assert os.listdir(tmp_path / "store/images") == []
    assert os.listdir(tmp_path / "store/tmp") == []


def test_anonymous_pull_and_run(world: World, env: dict[str, str], tmp_path: Path) -> None:
    r = pull(f"{world.registry.host}/rbox/base:v1", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"base-v1 {world.digest['base']}\n"
    assert r.stderr == ""                   # no progress on a pipe
    meta = inspected("base-v1", env, tmp_path)
    assert (meta["kind"], meta["source"], meta["digest"]) == ("registry", f"{world.registry.host}/rbox/base:v1",
                                                              world.digest["base"])
    assert meta["layers"] == world.layers["base"] and meta["config"] == CONFIG and meta["cached"] == []
    root = Path(str(meta["rootfs"]))
    assert (root / "etc/os-release").read_text() == "ID=rbox-pulled\n"
    r = run_rbox("run", "--image", "base-v1", env=env, cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "good\nfrom-image\n/work\n"), r.stderr
    for layer in world.layers["base"]:          # the layers are in the blob cache, verified
        assert sha((tmp_path / "store/blobs/sha256" / layer[7:]).read_bytes()) == layer


def test_bearer_token_pull(world: World, env: dict[str, str], tmp_path: Path) -> None:
    before = len(world.tokens.issued)
    r = pull(f"{world.auth.host}/rbox/base:v1", "--creds", world.tokens.user, "--debug",
             env={**env, "RBOX_REGISTRY_PASSWORD": world.tokens.password}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(f"base-v1 {world.digest['base']}\n")
    issued = world.tokens.issued[before:]
    assert issued, "no token was asked for"
    assert f"GET http://127.0.0.1:{world.tokens.port}/token" in r.stderr     # --debug shows the flow...
    for secret in (*issued, world.tokens.password, world.tokens.requests[-1]["authorization"].split()[1]):
        assert secret not in r.stdout + r.stderr                           # ...but no token, no password
    assert (Path(str(inspected("base-v1", env, tmp_path)["rootfs"])) / "etc/motd").read_text() == "good\n"


@pytest.mark.parametrize(("creds", "message"), [
    ((), "the registry refused access to rbox/base on 127.0.0.1:{port} (401): it needs credentials"),
    (("--creds", "alice:wrong"), "the registry refused your credentials for rbox/base"),
])
def test_bearer_registry_refuses(world: World, env: dict[str, str], tmp_path: Path, creds: tuple[str, ...],
                                 message: str) -> None:
    r = pull(f"{world.auth.host}/rbox/base:v1", *creds, env=env, cwd=tmp_path)
    assert r.returncode == 125
    assert f"rbox: error: {message.format(port=world.auth.port)}" in r.stderr
    assert "hint: " in r.stderr and "Traceback" not in r.stderr and "wrong" not in r.stderr
    store_is_clean(tmp_path)


def test_creds_without_a_password_and_no_terminal(world: World, env: dict[str, str], tmp_path: Path) -> None:
    """--creds USER takes the password from $RBOX_REGISTRY_PASSWORD or the terminal:
    with neither (a new session has no controlling terminal), a clear error, before
    anything is asked of the registry."""
    before = len(world.tokens.requests)
    r = subprocess.run([*RBOX, "image", "pull", "--creds", "alice", f"{world.auth.host}/rbox/base:v1"],
                       capture_output=True, text=True, env=rbox_env(env), cwd=tmp_path, timeout=60,
                       stdin=subprocess.DEVNULL, start_new_session=True)
    assert r.returncode == 125
    assert "rbox: error: no password for --creds alice\nhint: set RBOX_REGISTRY_PASSWORD" in r.stderr
    assert len(world.tokens.requests) == before


def test_a_redirect_elsewhere_gets_no_token(world: World, env: dict[str, str], tmp_path: Path) -> None:
    """Blobs redirected to another origin (as to a storage service's signed URL): the
    token goes only where it was asked for."""
    proxy = Proxy(world.auth.port)
    try:
        proxy.redirect = {f"/v2/rbox/base/blobs/{d}" for d in world.layers["base"]}
        r = pull(f"{proxy.host}/rbox/base:v1", "--creds", f"{world.tokens.user}:{world.tokens.password}",
                 env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        blob_requests = [e for e in proxy.log if "/blobs/" in str(e["path"])]
        assert blob_requests and all(e["authorization"] for e in blob_requests)   # the control: it had one
        assert len(proxy.other_log) == len(world.layers["base"])
        assert [e["authorization"] for e in proxy.other_log] == [None] * len(proxy.other_log)
    finally:
        proxy.stop()


@pytest.mark.parametrize("what", ["layer", "config", "manifest"])
def test_a_changed_blob_is_refused(world: World, env: dict[str, str], tmp_path: Path, proxy: Proxy,
                                   what: str) -> None:
    """The proxy serves other bytes that would unpack (a layer of the same size, a
    config with another Env, another image's manifest whose blobs the repository has):
    only the digest tells."""
    ref = f"{proxy.host}/rbox/base:v1"
    if what == "layer":
        good = world.layers["base"][1]
        assert len(world.evil_top) == len(world.top_layer) and world.evil_top != world.top_layer
        proxy.substitute[f"/v2/rbox/base/blobs/{good}"] = world.evil_top
        message = f"blob {good} from the registry {proxy.host} does not match its digest"
    elif what == "config":
        good = str(world.manifests["base"]["config"]["digest"])  # type: ignore[index]
        _, _, body = get(world.registry.port, f"/v2/rbox/base/blobs/{good}")
        assert b"from-image" in body
        proxy.substitute[f"/v2/rbox/base/blobs/{good}"] = body.replace(b"from-image", b"evil-image")
        message = f"blob {good} from the registry {proxy.host} does not match its digest"
    else:
        good = world.digest["shared"]
        ref = f"{proxy.host}/rbox/shared@{good}"
        _, _, body = get(world.registry.port, f"/v2/rbox/base/manifests/{world.digest['base']}",
                         {"Accept": "application/vnd.oci.image.manifest.v1+json"})
        proxy.substitute[f"/v2/rbox/shared/manifests/{good}"] = body
        message = f"the manifest {proxy.host} served for {good} has digest {world.digest['base']}"
    r = pull(ref, "changed", env=env, cwd=tmp_path)
    assert r.returncode == 125, r.stderr
    assert f"rbox: error: {message}" in r.stderr and "hint: " in r.stderr
    store_is_clean(tmp_path)
    # Neither kept nor left to resume from (another layer stopped mid-way may be).
    assert not (tmp_path / "store/blobs/sha256" / good[7:]).exists()
    assert not (tmp_path / "store/blobs/partial" / good[7:]).exists()


def test_an_index_gives_this_hosts_image(world: World, env: dict[str, str], tmp_path: Path) -> None:
    entries = world.manifests["multi"]["manifests"]
    mine = next(m for m in entries if m["platform"]["architecture"] == HOST_ARCH)  # type: ignore[union-attr, index]
    r = pull(f"{world.registry.host}/rbox/multi:v1", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"multi-v1 {mine['digest']}\n"
    meta = inspected("multi-v1", env, tmp_path)
    assert meta["platform"] == f"linux/{HOST_ARCH}"
    assert (Path(str(meta["rootfs"])) / "etc/arch").read_text() == HOST_ARCH


def test_an_index_without_this_host_lists_what_it_has(world: World, env: dict[str, str], tmp_path: Path) -> None:
    r = pull(f"{world.registry.host}/rbox/foreign:v1", env=env, cwd=tmp_path)
    assert r.returncode == 125
    has = ", ".join(sorted(f"linux/{a}" for a in OTHER_ARCHES))
    assert f"the image has no variant for this host (linux/{HOST_ARCH}); it has: {has}" in r.stderr
    assert "hint: " in r.stderr
    store_is_clean(tmp_path)


def test_a_killed_pull_resumes_without_fetching_again(world: World, env: dict[str, str], tmp_path: Path,
                                                      proxy: Proxy, spawn) -> None:  # type: ignore[no-untyped-def]
    slow, first, second = world.layers["three"]
    slow_path = f"/v2/rbox/three/blobs/{slow}"
    proxy.stall[slow_path] = STALL_AT
    proc = spawn("image", "pull", f"{proxy.host}/rbox/three:v1", env=env, cwd=tmp_path)
    blobs = tmp_path / "store/blobs"
    partial = blobs / "partial" / slow[7:]
    # The bottom layer stalls half-way; the two above it are fetched meanwhile (in parallel).
    deadline = time.monotonic() + 15
    while not ((blobs / "sha256" / first[7:]).exists() and (blobs / "sha256" / second[7:]).exists()
               and partial.exists() and partial.stat().st_size == STALL_AT):
        assert time.monotonic() < deadline and proc.poll() is None, "the other layers were not fetched meanwhile"
        time.sleep(0.02)
    proc.kill()                                 # SIGKILL, mid-way through the slow layer
    proc.wait(timeout=10)
    assert not (tmp_path / "store/images/three-v1").exists()
    # Its unpacking sandbox (already unpacking the first layers) goes with it.
    assert wait_until(lambda: not [c for c in live_processes().values() if str(tmp_path) in c]), \
        [c for c in live_processes().values() if str(tmp_path) in c]
    del proxy.stall[slow_path]
    proxy.release()
    r = pull(f"{proxy.host}/rbox/three:v1", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert proxy.count(first) == 1 and proxy.count(second) == 1        # finished blobs: not again
    assert [e["range"] for e in proxy.log if slow in str(e["path"])] == [None, f"bytes={STALL_AT}-"]
    root = Path(str(inspected("three-v1", env, tmp_path)["rootfs"]))
    assert (root / "slow").read_bytes() == world.slow_data
    assert os.listdir(tmp_path / "store/tmp") == [] and os.listdir(blobs / "partial") == []


def test_ctrl_c_mid_pull(world: World, env: dict[str, str], tmp_path: Path, proxy: Proxy) -> None:
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it, while a layer
    stalls and the unpacking sandbox waits for it: rbox ends by the signal as it does
    anywhere before a sandbox runs (bin/rbox: the shell says 130), with no traceback,
    no image, and its unpacking sandbox gone with it (the staging directory is the next
    pull's to remove, as after a kill)."""
    slow = world.layers["three"][0]
    proxy.stall[f"/v2/rbox/three/blobs/{slow}"] = STALL_AT
    proc = subprocess.Popen([*RBOX, "image", "pull", f"{proxy.host}/rbox/three:v1"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=rbox_env(env),
                            cwd=tmp_path, start_new_session=True)
    try:
        assert proxy.stalled.wait(30), "the pull never reached the stalled layer"
        partial = tmp_path / "store/blobs/partial" / slow[7:]
        assert wait_until(lambda: partial.exists() and partial.stat().st_size == STALL_AT)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGINT, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert os.listdir(tmp_path / "store/images") == []
    assert wait_until(lambda: not [c for c in live_processes().values() if str(tmp_path) in c])


def test_shared_layers_are_fetched_once_and_removed_last(world: World, env: dict[str, str], tmp_path: Path,
                                                        proxy: Proxy) -> None:
    common, base_only = world.layers["base"]
    assert world.layers["shared"][0] == common
    for name in ("base", "shared"):
        r = pull(f"{proxy.host}/rbox/{name}:v1", env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert proxy.count(f"/blobs/{common}") == 1                         # the second pull took it from the cache
    assert inspected("shared-v1", env, tmp_path)["cached"] == [common]
    human = run_rbox("image", "inspect", "shared-v1", env=env, cwd=tmp_path).stdout
    assert f"  {common}  (was in the blob cache)\n" in human
    blobs = tmp_path / "store/blobs/sha256"
    assert run_rbox("image", "rm", "base-v1", env=env, cwd=tmp_path).returncode == 0
    left = set(os.listdir(blobs))
    assert common[7:] in left and base_only[7:] not in left            # still used by shared-v1
    assert run_rbox("image", "rm", "shared-v1", env=env, cwd=tmp_path).returncode == 0
    assert os.listdir(blobs) == []


def test_an_imported_layer_is_not_fetched_again(world: World, env: dict[str, str], tmp_path: Path,
                                                proxy: Proxy) -> None:
    r = run_rbox("image", "import", f"oci:{world.layout.top}:base", "local", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""                   # no progress on a pipe
    r = pull(f"{proxy.host}/rbox/base:v1", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [d for d in world.layers["base"] if proxy.count(d)] == []
    assert inspected("base-v1", env, tmp_path)["cached"] == world.layers["base"]


def test_concurrent_pulls_of_one_name(world: World, env: dict[str, str], tmp_path: Path) -> None:
    procs = [start_rbox("image", "pull", f"{world.registry.host}/rbox/base:v1", env=env, cwd=tmp_path)
             for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert out == f"base-v1 {world.digest['base']}\n"
    assert os.listdir(tmp_path / "store/images") == ["base-v1"]
    assert os.listdir(tmp_path / "store/tmp") == [] and os.listdir(tmp_path / "store/blobs/partial") == []


def on_a_terminal(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """rbox ARGS with its standard error on a new pseudo-terminal: what it wrote there."""
    master, slave = os.openpty()
    proc = subprocess.Popen([*RBOX, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
                            env=rbox_env(env), cwd=cwd)
    os.close(slave)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:             # EIO: every writer has gone
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
    return proc.wait(timeout=60), out.decode(errors="replace")


def test_progress_on_a_terminal(world: World, env: dict[str, str], tmp_path: Path) -> None:
    code, shown = on_a_terminal(["image", "pull", f"{world.registry.host}/rbox/base:v1"], env, tmp_path)
    assert code == 0, shown
    assert re.search(r"\rpulling +0/2 layers  0 B/[\d.]+ (KiB|MiB)", shown), shown      # redrawn in place
    assert re.search(r"\rpulling +2/2 layers  [\d.]+ (KiB|MiB)/[\d.]+ (KiB|MiB)", shown), shown
    assert re.search(r"\rpulled base-v1: 2 layers, [\d.]+ (KiB|MiB) in [\d.]+ s \([\d.]+ (B|KiB|MiB|GiB)/s\), "
                     r"[\d.]+ MiB unpacked", shown), shown
    code, shown = on_a_terminal(["image", "import", f"oci:{world.layout.top}:base", "local"], env, tmp_path)
    assert code == 0, shown
    assert re.search(r"\runpacking +2/2 layers", shown) and "\rimported local: 2 layers" in shown, shown
    code, shown = on_a_terminal(["image", "pull", "--quiet", f"{world.registry.host}/rbox/shared:v1"], env,
                                tmp_path)
    assert (code, shown) == (0, "")


GUARD = """
import ipaddress, socket, sys
real = socket.socket.connect
def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not ipaddress.ip_address(address[0]).is_loopback:
        sys.stderr.write(f"CONNECT-ATTEMPT {address[0]} {address[1]}\\n")
        raise OSError(101, "Network is unreachable (blocked by the test)")
    return real(self, address)
socket.socket.connect = connect
from rootless import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize(("where", "insecure"), [("ref", False), ("ref", True), ("redirect", False),
                                                 ("redirect", True), ("realm", False)])
def test_plain_http_off_this_machine_is_refused_before_connecting(world: World, env: dict[str, str],
                                                                  tmp_path: Path, proxy: Proxy, where: str,
                                                                  insecure: bool) -> None:
    """Every connection but to loopback is blocked in the rbox process (so nothing can
    leave the machine even if the check fails), and reported: without --insecure there
    must be none; with it, the attempt shows that the probe sees one."""
    ref = f"{proxy.host}/rbox/base:v1"
    if where == "ref":
        ref = "http://192.0.2.1/rbox/base:v1"
    elif where == "redirect":
        proxy.location[f"/v2/rbox/base/blobs/{world.layers['base'][0]}"] = "http://192.0.2.1/blob"
    else:
        proxy.canned["/v2/rbox/base/manifests/v1"] = (401, {"WWW-Authenticate": 'Bearer realm="http://192.0.2.1/t"'},
                                                      b"")
    args = ["image", "pull", *(["--insecure"] if insecure else []), ref]
    r = subprocess.run([sys.executable, "-c", GUARD, *args], capture_output=True, text=True, env=rbox_env(env),
                       cwd=tmp_path, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 125, r.stderr
    if insecure:
        assert "CONNECT-ATTEMPT 192.0.2.1 80" in r.stderr
        assert "rbox: error: cannot reach the registry 192.0.2.1" in r.stderr
    else:
        assert "CONNECT-ATTEMPT" not in r.stderr
        what = {"ref": "the registry", "redirect": "a redirect to", "realm": "the token service"}[where]
        assert f"rbox: error: refusing plain http to {what} `192.0.2.1`" in r.stderr
        assert "hint: use https, or pass --insecure" in r.stderr
    if os.path.exists(tmp_path / "store"):
        store_is_clean(tmp_path)


@pytest.mark.parametrize(("case", "message"), [
    ("unreachable", "cannot reach the registry 127.0.0.1:{closed}: Connection refused"),
    ("no-tag", "no image `rbox/base:nope` on {registry}"),
    ("bad-ref", "invalid image reference `{registry}/Rbox/Base`"),
    ("bad-name", "invalid image name `../x`"),
    ("schema1", "has an old Docker schema 1 manifest"),
    ("artifact", "is not a container image (its config is of type `application/vnd.cncf.helm.config.v1+json`)"),
    ("not-json", "the registry's manifest is invalid: not JSON"),
])
def test_pull_errors(world: World, env: dict[str, str], tmp_path: Path, proxy: Proxy, case: str,
                     message: str) -> None:
    closed_port = reg.free_port()                   # a port nothing listens on
    args = {"unreachable": [f"127.0.0.1:{closed_port}/rbox/base:v1"],
            "no-tag": [f"{world.registry.host}/rbox/base:nope"], "bad-ref": [f"{world.registry.host}/Rbox/Base"],
            "bad-name": [f"{world.registry.host}/rbox/base:v1", "../x"]}.get(case, [f"{proxy.host}/rbox/odd:v1"])
    digest = "sha256:" + "0" * 64
    canned = {
        "schema1": (200, {"Content-Type": "application/vnd.docker.distribution.manifest.v1+prettyjws"},
                    b'{"schemaVersion": 1, "name": "rbox/odd", "tag": "v1", "fsLayers": []}'),
        "artifact": (200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": digest, "size": 2},
            "layers": []}).encode()),
        "not-json": (200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, b"<html>"),
    }
    if case in canned:
        proxy.canned["/v2/rbox/odd/manifests/v1"] = canned[case]
    r = pull(*args, env=env, cwd=tmp_path)
    assert r.returncode == 125
    assert message.format(closed=closed_port, registry=world.registry.host) in r.stderr, r.stderr
    assert "hint: " in r.stderr and "Traceback" not in r.stderr
    if os.path.exists(tmp_path / "store"):
        store_is_clean(tmp_path)


def test_up_to_date_pull_fetches_nothing(world: World, env: dict[str, str], tmp_path: Path, proxy: Proxy) -> None:
    for _ in range(2):
        r = pull(f"{proxy.host}/rbox/base:v1", env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"base-v1 {world.digest['base']}\n"
    config = str(world.manifests["base"]["config"]["digest"])  # type: ignore[index]
    fetched = sorted(str(e["path"]) for e in proxy.log if "/blobs/" in str(e["path"]))
    assert fetched == sorted(f"/v2/rbox/base/blobs/{d}" for d in [config, *world.layers["base"]])

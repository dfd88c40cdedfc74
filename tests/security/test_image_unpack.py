"""The unpacking sandbox: layers are unpacked by a command that can write the target and
nothing else of the user's, with the owners of the archive kept (subordinate ids).

The store's functions run in a child interpreter (they fork an rbox sandbox), never in
the test runner's process.
"""

from __future__ import annotations

import io
import os
import pwd
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import rbox_env

pytestmark = pytest.mark.needs_userns

PROBE = """
import os, sys
for name, path in (("victim", sys.argv[1]), ("target", sys.argv[2])):
    try:
        with open(os.path.join(path, "written"), "w") as f:
            f.write("x")
        print(f"{name}=ok")
    except OSError as e:
        print(f"{name}={__import__('errno').errorcode[e.errno]}")
"""


def store_call(code: str) -> subprocess.CompletedProcess[str]:
    prelude = "import sys\nfrom rootless.image import store\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=60,
                          env=rbox_env(None), cwd="/", stdin=subprocess.DEVNULL)


@pytest.fixture
def home_dir() -> Iterator[Path]:
    """A directory in the user's home: the kind of place a mistake must not reach
    (/tmp would prove nothing: the sandbox has its own)."""
    path = Path(tempfile.mkdtemp(prefix="rbox-test-image-", dir=pwd.getpwuid(os.getuid()).pw_dir))
    yield path
    subprocess.run([sys.executable, "-m", "rootless", "unshare", "--", "rm", "-rf", str(path)], env=rbox_env(None),
                   check=True, stdin=subprocess.DEVNULL)


def test_unpacking_sandbox_writes_only_the_target(home_dir: Path) -> None:
    victim, target = home_dir / "victim", home_dir / "target"
    victim.mkdir()
    target.mkdir()
    # Positive control: without the sandbox, the same probe writes both.
    plain = subprocess.run([sys.executable, "-c", PROBE, str(victim), str(target)], capture_output=True, text=True)
    assert plain.stdout.split() == ["victim=ok", "target=ok"]
    (victim / "written").unlink()
    (target / "written").unlink()
    r = store_call(f"sys.exit(store.sandbox(store.sandbox_argv({str(target)!r}, []) + "
                   f"[sys.executable, '-c', {PROBE!r}, {str(victim)!r}, {str(target)!r}])[0])")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["victim=EROFS", "target=ok"]
    assert not (victim / "written").exists()


def layer(path: Path, *entries: tuple[str, bytes, str, int]) -> str:
    """A tar file of (name, type, link, uid) entries, each file holding b'data'."""
    with tarfile.open(path, "w") as tar:
        for name, kind, link, uid in entries:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.uid, info.gid, info.mode = kind, link, uid, uid, 0o755
            data = b"data" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def subordinate_base() -> int:
    user = pwd.getpwuid(os.getuid()).pw_name
    for line in Path("/etc/subuid").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in (user, str(os.getuid())):
            return int(rest.partition(":")[0])
    raise AssertionError("no subordinate range")


@pytest.mark.needs_subuid
def test_unpack_keeps_owners_in_the_user_namespace(home_dir: Path) -> None:
    target = home_dir / "target"
    target.mkdir()
    first = layer(home_dir / "1.tar", ("etc", tarfile.DIRTYPE, "", 0), ("etc/app", tarfile.REGTYPE, "", 5),
                  ("null", tarfile.CHRTYPE, "", 0))
    second = layer(home_dir / "2.tar", ("etc/.wh.app", tarfile.REGTYPE, "", 0), ("bin", tarfile.REGTYPE, "", 0))
    r = store_call(f"print(store.unpack([{first!r}], {str(target)!r}, store.keeps_owners()))")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "4\n"          # the bytes of its one file
    assert r.stderr == "rbox: notice: device nodes skipped (a user namespace cannot make them)\n"
    assert (target / "etc").stat().st_uid == os.getuid()          # 0 inside is you
    assert (target / "etc/app").stat().st_uid == subordinate_base() + 4
    r = store_call(f"store.unpack([{first!r}, {second!r}], {str(target) + '2'!r}, True)")
    assert r.returncode != 0 and "No such file" in r.stderr      # the target must exist


@pytest.mark.needs_subuid
def test_hostile_layers_fail_in_the_sandbox_and_stay_inside(home_dir: Path) -> None:
    target = home_dir / "target"
    target.mkdir()
    (home_dir / "secret").write_text("secret\n")
    first = layer(home_dir / "1.tar", ("x", tarfile.SYMTYPE, "../../outside", 0))
    second = layer(home_dir / "2.tar", ("x/f", tarfile.REGTYPE, "", 0), ("h", tarfile.LNKTYPE, "/secret", 0))
    r = store_call(f"""
from rootless.errors import RboxError
try:
    store.unpack([{first!r}, {second!r}], {str(target)!r}, True)
except RboxError as e:
    print(e.message)
""")
    assert r.returncode == 0, r.stderr
    from rootless.image.unpack import has_openat2

    # Refused either way: through openat2 (RESOLVE_IN_ROOT) the link leads nowhere inside;
    # before Linux 5.6 a layer that reaches through a symlinked directory is refused.
    why = ("is a symlink that leads to no directory in the image" if has_openat2()
           else "is a symlink, and following it safely needs openat2 (Linux 5.6)")
    assert f"layer 2: `x` {why}" in r.stderr
    assert r.stdout.startswith("unpacking failed")
    assert sorted(p.name for p in home_dir.iterdir()) == ["1.tar", "2.tar", "secret", "target"]
    assert os.listdir(target) == ["x"]


REWRITE = """
import os, sys
args = sys.argv[1:]
for fd in args[2:] if args[0] == "--keep-owners" else args[1:]:     # [--keep-owners] TARGET FD...
    try:
        out = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY)   # the magic link, opened again for writing
        os.write(out, b"POISONED")
        print("wrote")
    except OSError as e:
        print(f"refused {e.strerror}")
"""


def test_the_unpacker_cannot_rewrite_a_cached_blob(home_dir: Path) -> None:
    """A blob in the cache is trusted by every later image: the unpacking sandbox gets a
    layer through a pipe, so a command there that opens its descriptor again for
    writing (/proc/self/fd/N) reaches the pipe, never the blob's file. The control: a
    descriptor of the file itself, read-only as it is, lets the same probe rewrite it."""
    target = home_dir / "target"
    target.mkdir()
    blob = layer(home_dir / "blob", ("f", tarfile.REGTYPE, "", 0))
    before = Path(blob).read_bytes()
    r = store_call(f"""
store.UNPACKER = ["-c", {REWRITE!r}]
u = store.Unpacking({str(target)!r}, False)
u.feed({blob!r})
u.abort()
print(u.result)
""")
    assert r.returncode == 0, r.stderr
    assert "(0, 'wrote\\n')" in r.stdout           # it wrote: into the pipe
    assert Path(blob).read_bytes() == before
    # Control: the file's own descriptor passed into the same sandbox (as rbox once did).
    r = store_call(f"""
import os
fd = os.open({blob!r}, os.O_RDONLY)
argv = store.sandbox_argv({str(target)!r}, [fd]) + [sys.executable, "-c", {REWRITE!r}, {str(target)!r}, str(fd)]
print(store.sandbox(argv, capture=True, keep=[fd]))
""")
    assert r.returncode == 0, r.stderr
    assert "(0, 'wrote\\n')" in r.stdout and Path(blob).read_bytes().startswith(b"POISONED")

"""SquashFS files and rbox: a crafted image imported for real writes nothing outside the
image, and mksquashfs, in the export's sandbox, can write nothing but the output file.

The store's and the export's functions run in a child interpreter (they fork an rbox
sandbox), never in the test runner's process. The places a mistake must not reach are
in the user's home (/tmp would prove nothing: the sandbox has its own).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers import rbox_env, run_rbox
from tests.security.test_image_unpack import home_dir  # noqa: F401 - the fixture is used by name
from tests.unit.test_squash import crafted, symlink_target

pytestmark = [pytest.mark.needs_userns, pytest.mark.needs_squashfs_tools]

PROBE = """
import os, sys
for path in sys.argv[1:]:
    try:
        if path.startswith("fd:"):
            os.write(int(path[3:]), b"x")
        else:
            with open(os.path.join(path, "written"), "w") as f:
                f.write("x")
        print(f"{os.path.basename(path)}=ok")
    except OSError as e:
        print(f"{os.path.basename(path)}={__import__('errno').errorcode[e.errno]}")
"""


@pytest.mark.needs_subuid
def test_export_sandbox_writes_only_the_output(home_dir: Path) -> None:  # noqa: F811
    """The image, the config directory and the home are read-only to mksquashfs; the
    output descriptor is writable. Control: without the sandbox, the probe writes all."""
    places = [home_dir / name for name in ("rootfs", "meta", "victim")]
    for place in places:
        place.mkdir()
    out = home_dir / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        plain = subprocess.run([sys.executable, "-c", PROBE, *map(str, places)], capture_output=True, text=True)
        assert plain.stdout.split() == ["rootfs=ok", "meta=ok", "victim=ok"]
        for place in places:
            (place / "written").unlink()
        argv = f"export.sandbox_argv({str(places[0])!r}, {str(places[1])!r}, {fd})"
        code = (f"import sys\nfrom rootless.image import export, store\n"
                f"sys.exit(store.sandbox({argv} + [sys.executable, '-c', {PROBE!r}, "
                f"{str(places[0])!r}, {str(places[1])!r}, {str(places[2])!r}, 'fd:{fd}'], keep=[{fd}])[0])")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/",
                           env=rbox_env(None), stdin=subprocess.DEVNULL, pass_fds=(fd,))
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["rootfs=EROFS", "meta=EROFS", "victim=EROFS", f"fd:{fd}=ok"]
        assert out.read_bytes() == b"x"
        assert not any((place / "written").exists() for place in places)
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["symlink_then_dir", "absolute_symlink_then_dir"])
def test_crafted_squashfs_import_writes_nothing_outside(home_dir: Path, kind: str) -> None:  # noqa: F811
    """A symlink to a directory outside, and a directory of the same name with a file:
    refused, nothing in `outside`, nothing under the image's name, no staging left."""
    outside = home_dir / "outside"
    outside.mkdir()
    (home_dir / "work").mkdir()
    image = crafted(home_dir / "work", kind, outside)
    # Control: the entries, made the way a path-following extractor makes them (into a
    # target beside `outside`, as the store's is not), land in `outside`.
    naive = home_dir / "naive" / "sub"
    naive.mkdir(parents=True)
    os.symlink(symlink_target(kind, outside), naive / "escapeAAAA1")
    os.makedirs(naive / "escapeAAAA1", exist_ok=True)
    (naive / "escapeAAAA1" / "pwned").write_text("pwned\n")
    assert (outside / "pwned").read_text() == "pwned\n"
    (outside / "pwned").unlink()
    store = home_dir / "store"
    r = run_rbox("image", "import", str(image), "x", env={"RBOX_STORAGE": str(store)}, cwd=home_dir)
    assert r.returncode == 125
    assert "layer 1: two entries named b'escapeAAAA1' in one directory: refusing the image" in r.stderr
    assert os.listdir(outside) == []
    assert os.listdir(store / "images") == [] and os.listdir(store / "tmp") == []

"""The pure parts of overlays (overlay.py, fusekeeper.py, hostcheck.check_overlay): how
overlays are numbered and which daemons they need, and the refusals made before anything
starts."""

from __future__ import annotations

import pytest

from rootless import fusekeeper, hostcheck, overlay
from rootless.errors import SpecError
from rootless.overlay import Layer


def test_a_kept_directory_on_a_network_file_system_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(overlay.sc, "statfs_type", lambda path: 0x6969)
    with pytest.raises(SpecError) as e:
        overlay.check_keep("keep", str(tmp_path / "keep"), "--persist", ["/images/x"])
    assert "--persist `keep` is on NFS, a network file system" in e.value.message


def test_a_kept_directory_may_not_overlap_the_lower_layer(tmp_path) -> None:
    for keep, lower in ((tmp_path / "img/keep", tmp_path / "img"), (tmp_path, tmp_path / "img")):
        with pytest.raises(SpecError, match="overlaps"):
            overlay.check_keep(str(keep), str(keep), "--persist", [str(lower)])
    assert overlay.check_keep("k", str(tmp_path / "k"), "--persist", [str(tmp_path / "img")]) == str(tmp_path / "k")


def layer(n: int, sqfs: bool = False, is_overlay: bool = True) -> Layer:
    return Layer(n, "/" if n == 0 else f"/d{n}", None if sqfs else f"/src{n}", "/f.sqfs" if sqfs else None, None,
                 is_overlay, "x")


@pytest.mark.parametrize(("layers", "driver", "expected"), [
    ([layer(0), layer(1)], "kernel", []),
    ([layer(0), layer(1)], "fuse", [("ov0", True), ("ov1", True)]),
    ([layer(0, sqfs=True)], "kernel", [("sq0", True)]),
    # fuse-overlayfs over squashfuse: the keeper mounts squashfuse in its own namespace.
    ([layer(0, sqfs=True), layer(1)], "fuse", [("sq0", False), ("ov0", True), ("ov1", True)]),
    ([layer(0, sqfs=True, is_overlay=False)], "fuse", [("sq0", True)]),
])
def test_the_daemons_each_sandbox_needs(layers: list[Layer], driver: str, expected: list[tuple[str, bool]]) -> None:
    assert [(job.name, job.by_init) for job in fusekeeper.jobs(layers, driver)] == expected


def test_check_says_which_overlay_driver_is_used() -> None:
    kernel = hostcheck.check_overlay(None, "", "/usr/bin/fuse-overlayfs", True)
    assert (kernel.status, kernel.detail.split(":")[0]) == ("ok", "present")
    fuse = hostcheck.check_overlay("no overlayfs in a user namespace", "", "/usr/bin/fuse-overlayfs", True)
    assert fuse.status == "ok" and "use fuse-overlayfs (/usr/bin/fuse-overlayfs)" in fuse.detail
    assert fuse.detail.startswith("absent (no overlayfs in a user namespace)")
    none = hostcheck.check_overlay("old kernel", "", None, True)
    assert (none.status, none.fix) == ("warn", hostcheck.FIX["fuse-overlayfs"])
    forced = hostcheck.check_overlay(None, "fuse", "/usr/bin/fuse-overlayfs", True)
    assert forced.detail.startswith("RBOX_OVERLAY=fuse: ")

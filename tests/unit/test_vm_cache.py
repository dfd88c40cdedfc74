"""The VM test beds' image cache (tests/vm/run): one image per OS, both OSes side by side,
and never an image another run is booting. Real directories and flocks in tmp_path;
only the image build itself is replaced (it needs root and minutes)."""

from __future__ import annotations

import fcntl
import importlib.machinery
import importlib.util
import os
import time
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "vm" / "run"


@pytest.fixture
def vmrun(tmp_path, monkeypatch):
    loader = importlib.machinery.SourceFileLoader("vmrun", str(RUN))
    spec = importlib.util.spec_from_loader("vmrun", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    monkeypatch.setattr(module, "CACHE", tmp_path)
    built = []

    def build(target: Path, guest) -> None:
        target.mkdir()
        (target / "image.ext4").write_bytes(b"ext4")
        built.append(target.name)

    monkeypatch.setattr(module, "build", build)
    module.built = built
    return module


def image(cache: Path, name: str, age: float = 7200) -> Path:
    path = cache / name
    path.mkdir()
    (path / "image.ext4").write_bytes(b"ext4")
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_a_build_prunes_only_its_own_os_and_keeps_what_is_in_use_or_recent(vmrun, tmp_path) -> None:
    other_os = image(tmp_path, "bullseye-0000000000000000")
    stale = image(tmp_path, "bookworm-1111111111111111")
    legacy = image(tmp_path, "2222222222222222")              # before there were two OSes: bookworm's
    partial = image(tmp_path, "bookworm-3333333333333333.partial", age=0)   # a dead build's
    recent = image(tmp_path, "bookworm-4444444444444444", age=60)           # another checkout's
    booting = image(tmp_path, "bookworm-5555555555555555")
    held = os.open(booting / "image.ext4", os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_SH)
    try:
        path, fd = vmrun.image_for("bookworm", vmrun.OSES["bookworm"], rebuild=False)
        os.close(fd)
    finally:
        os.close(held)
    assert vmrun.built == [path.name] and path.name.startswith("bookworm-")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {path.name, other_os.name, recent.name, booting.name, ".lock"}, left
    assert not stale.exists() and not legacy.exists() and not partial.exists()


def test_the_image_is_held_while_it_boots_and_a_cached_one_is_not_rebuilt(vmrun, tmp_path) -> None:
    path, fd = vmrun.image_for("bullseye", vmrun.OSES["bullseye"], rebuild=False)
    probe = os.open(path / "image.ext4", os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)   # what prune() tries first
        os.close(fd)
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)       # released with its descriptor
    finally:
        os.close(probe)
    again, fd = vmrun.image_for("bullseye", vmrun.OSES["bullseye"], rebuild=False)
    os.close(fd)
    assert again == path and vmrun.built == [path.name]

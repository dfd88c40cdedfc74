#!/usr/bin/env python3
"""Images: `rbox image import` of a 100+ MB root file system tar against GNU tar unpacking
the same archive into the same file system; `rbox image export` against plain mksquashfs
of the same tree; `rbox image import` of that SquashFS file against unsquashfs.

Run as an ordinary user, from the project's venv:
    .venv/bin/python bench/image_import.py [-n 3] [--tar ROOTFS.tar] [--dir DIR]

The archive: --tar, else the Debian userland the tests use ($RBOX_TEST_DEBIAN_TAR or
/var/cache/rbox-test/debian-bullseye.tar, .ci/debian-image) written twice into one tar
(under a/ and b/: 160+ MB of a real root file system), else the host's /usr/lib and
/usr/share/perl* up to 150 MB. Everything is written below --dir (default: the current
directory), so both sides write to the same file system; the archive is read once
before timing (page cache), and sync(2) runs before each timed step, so that none pays
for the writeback of the one before (none of them syncs its own). Rounds are
interleaved, medians printed, with the ratio of speeds (tar's time / rbox's: 1.0 is as
fast as tar, the target in issue 14 is >= 0.8).

What each side does: `tar -xpf` only unpacks. `rbox image import` also copies the
archive into the store while computing its sha256 digest, starts the unpacking sandbox,
and renames the finished image into place; the line `unpack only` times rbox's unpacker
alone on the same archive (in this process, without the sandbox or the copy), to show
where the time goes. A benchmark, not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from startup import precompile, rbox_command  # noqa: E402

DEBIAN = os.environ.get("RBOX_TEST_DEBIAN_TAR", "/var/cache/rbox-test/debian-bullseye.tar")


def make_archive(path: str) -> str:
    """A 100+ MB root file system tar at `path`; what it was made from."""
    if os.access(DEBIAN, os.R_OK):
        with tarfile.open(DEBIAN) as src, tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as out:
            members = src.getmembers()
            for prefix in ("a", "b"):
                for m in members:
                    if m.ischr() or m.isblk():
                        continue            # neither side can make them as a user
                    copy = tarfile.TarInfo(f"{prefix}/{m.name.removeprefix('./')}".rstrip("/"))
                    for field in ("mode", "uid", "gid", "mtime", "type", "size", "devmajor", "devminor"):
                        setattr(copy, field, getattr(m, field))
                    if m.islnk():
                        copy.linkname = f"{prefix}/{m.linkname.removeprefix('./')}"
                    elif m.issym():
                        copy.linkname = m.linkname
                    out.addfile(copy, src.extractfile(m) if m.isreg() else None)
        return f"{DEBIAN}, twice"
    subprocess.run(["tar", "--ignore-failed-read", "--warning=none", "-cf", path, "--tape-length=150M",
                    "-C", "/", "usr/lib", "usr/share/perl5", "usr/share/perl"], stdin=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return "the host's /usr/lib and /usr/share/perl*"


CPU: dict[str, list[float]] = {}        # name -> CPU seconds (user + system) of each run


def cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], env: dict[str, str] | None = None, name: str = "") -> float:
    os.sync()                   # the previous step's writeback (and deletions) not counted here
    start, before = time.perf_counter(), cpu(resource.RUSAGE_CHILDREN)
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    took = time.perf_counter() - start
    CPU.setdefault(name, []).append(cpu(resource.RUSAGE_CHILDREN) - before)
    errors = [line for line in r.stderr.decode(errors="replace").splitlines()
              if "Cannot mknod" not in line and "Exiting with failure status" not in line]
    if r.returncode != 0 and (argv[0] != "tar" or errors):
        sys.exit(f"{argv[:3]} failed ({r.returncode}): {r.stderr.decode(errors='replace').strip()[-500:]}")
    return took


def unpack_only(archive: str, target: str) -> float:
    from rootless.image.unpack import Unpacker

    os.mkdir(target)
    os.sync()
    start, before = time.perf_counter(), cpu(resource.RUSAGE_SELF)
    u = Unpacker(target, False)
    with open(archive, "rb") as f:
        u.layer(f)
    u.close()
    CPU.setdefault("unpack only", []).append(cpu(resource.RUSAGE_SELF) - before)
    return time.perf_counter() - start


def remove(path: str) -> None:
    subprocess.run(["chmod", "-R", "u+rwX", path], stderr=subprocess.DEVNULL)
    shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=3)
    parser.add_argument("--tar", help="a root file system tar of your own (100+ MB)")
    parser.add_argument("--dir", default=os.getcwd(), help="where to write (one file system for all)")
    args = parser.parse_args()
    if os.geteuid() == 0:
        sys.exit("run the benchmark as an ordinary user: rootless unpacking is what it measures")
    precompile()
    rbox = rbox_command()
    work = tempfile.mkdtemp(dir=args.dir, prefix="rbox-bench-")
    try:
        run(args, rbox, work)
    finally:
        # The store holds files of subordinate ids: removed where they are yours.
        subprocess.run([*rbox, "unshare", "--", "rm", "-rf", work], stdin=subprocess.DEVNULL)


def run(args: argparse.Namespace, rbox: list[str], work: str) -> None:
    archive = args.tar or os.path.join(work, "rootfs.tar")
    origin = args.tar or make_archive(archive)
    mb = os.path.getsize(archive) / 1e6
    with open(archive, "rb") as f:
        while f.read(1 << 20):
            pass                        # into the page cache, for both sides alike
    env = {**os.environ, "RBOX_STORAGE": os.path.join(work, "store")}
    times: dict[str, list[float]] = {"tar -xpf": [], "rbox image import": [], "unpack only": []}
    export: dict[str, list[float]] = {"mksquashfs": [], "rbox image export": []}
    back: dict[str, list[float]] = {"unsquashfs -d": [], "rbox image import": []}
    comp = ["-comp", "zstd", "-Xcompression-level", "3"]
    for number in range(args.rounds):
        theirs = os.path.join(work, f"tar-{number}")
        os.mkdir(theirs)
        times["tar -xpf"].append(timed(["tar", "-xpf", archive, "-C", theirs], name="tar -xpf"))
        # A new name each round: replacing an image removes the old one, which is not import's work.
        times["rbox image import"].append(timed([*rbox, "image", "import", archive, f"bench{number}"], env,
                                                name="rbox image import"))
        times["unpack only"].append(unpack_only(archive, os.path.join(work, f"only-{number}")))
        remove(os.path.join(work, f"only-{number}"))
        if shutil.which("mksquashfs"):
            plain, ours = os.path.join(work, "plain.sqfs"), os.path.join(work, "ours.sqfs")
            export["mksquashfs"].append(timed(["mksquashfs", theirs, plain, "-noappend", "-quiet", "-no-progress",
                                               "-no-xattrs", *comp], name="mksquashfs"))
            export["rbox image export"].append(timed([*rbox, "image", "export", f"bench{number}", ours, "--force"],
                                                     env, name="rbox image export"))
            out = os.path.join(work, "unsquashed")
            back["unsquashfs -d"].append(timed(["unsquashfs", "-q", "-n", "-d", out, ours], name="unsquashfs -d"))
            remove(out)
            back["rbox image import"].append(timed([*rbox, "image", "import", ours, f"back{number}"], env,
                                                   name="rbox image import (SquashFS)"))
            subprocess.run([*rbox, "image", "rm", f"back{number}"], env=env, check=True)
        subprocess.run([*rbox, "image", "rm", f"bench{number}"], env=env, check=True)
        remove(theirs)
    print(f"archive: {mb:.0f} MB from {origin}; {args.rounds} rounds, interleaved; medians; "
          f"load average {os.getloadavg()[0]:.1f} at the end\n")
    report(times, "tar -xpf", mb)
    if export["mksquashfs"]:
        size = os.path.getsize(os.path.join(work, "ours.sqfs")) / 1e6
        print(f"\nexport of that image to SquashFS (zstd level 3 on both sides), {size:.0f} MB written:")
        report(export, "mksquashfs", mb)
        print(f"\nimport of rbox's SquashFS file ({size:.0f} MB, zstd) against unsquashfs to a directory:")
        report(back, "unsquashfs -d", mb, cpu_names={"rbox image import": "rbox image import (SquashFS)"})


def report(times: dict[str, list[float]], base_name: str, mb: float, cpu_names: dict[str, str] | None = None) -> None:
    """Wall time (and its ratio of speeds), and CPU time (user + system, children
    included: the sandbox's processes count for rbox), which a busy machine disturbs less."""
    base = statistics.median(times[base_name])
    print(f"  {'':<20} {'median':>8} {'MB/s':>7} {'speed vs ' + base_name:>22} {'CPU':>8}")
    for name, values in times.items():
        med = statistics.median(values)
        spent = CPU.get((cpu_names or {}).get(name, name))
        shown = f"{statistics.median(spent):7.2f}s" if spent else ""
        print(f"  {name:<20} {med:7.2f}s {mb / med:7.0f} {base / med:21.2f}x {shown:>8}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Start-up cost of `rbox run -- true`, against the interpreter, bubblewrap and unshare.

Run as an ordinary user, from the project's venv:

    .venv/bin/python bench/startup.py [-n 50] [--json OUT] [--compare PREVIOUS.json]

All commands run in one process, interleaved round by round (so that machine noise hits
all of them alike). For each: the median and p90 wall time and the CPU time (user+sys of
the process and every descendant it reaped, from wait4: for rbox its stage-1, init, the
command and newuidmap/newgidmap; not slirp4netns, which rbox kills without waiting). The
peak RSS of the rbox process is its own VmHWM, which `--debug` prints at the end
(wait4's ru_maxrss would count the benchmark's own memory: the kernel carries the
forking process's high-water mark across exec). Then rbox's ratios to `python3 -I
-S -c pass` (the floor under any Python tool), bubblewrap and unshare, what the default
network (slirp4netns) adds over --net=none, and where each millisecond of a --net=none
run goes, from rbox's --debug timestamps (median over the rounds; --debug itself adds a
little).

The targets of issue #17 are printed beside the figures: rbox --net=none at most 2.0x
the interpreter, slirp4netns at most +10%, CPU at most 1.5x the interpreter's, peak RSS
at most 10 MiB. Absolute times depend on the machine and its load; the ratios of one
interleaved run do not (much). --compare checks those ratios against an earlier --json
and exits with 1 when one grew by more than 10%.

A benchmark, not a test: the suite only runs it once with `-n 1` (tests/integration/
test_startup.py), to keep it working.

The nested user namespace (issue #10) is shown as its own step: init's steps from
unsharing it to the new session keyring, 0.3-0.5 ms on a 2-core Debian 12 VM, most of it
the pipe round trip to stage-1 and its three /proc writes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

FLOOR = "python -I -S -c pass"
REGRESSION = 1.10          # --compare: a ratio more than 10% above the previous run's
TARGETS = {"rbox / python -I -S": 2.0, "slirp4netns / none": 1.10, "cpu rbox / python -I -S": 1.5}
RSS_TARGET_KIB = 10 * 1024

# The --net=none run's phases: (name, the debug line that ends it). Each starts where the
# one before ends; the first at the bench's fork, the last ends when rbox has been reaped.
PHASES = (
    ("interpreter start, site, first imports", "started at "),
    ("options, sandbox modules' imports, plan", "id map ("),
    ("stage-1: fork, unshare user namespace", "unshare user namespace"),
    ("id maps (newgidmap, newuidmap)", "unshare mount pid"),
    ("namespaces, fork of init", "] + bind / -> /"),
    ("mounts, pivot_root, hostname", "hostname "),
    ("nested user namespace, keyring", "new session keyring"),
    ("drop privileges, seccomp, spawn, the command", "command exited"),
    ("teardown: init, stage-1 exit", "stage-1 exited"),
    ("rbox's own exit", "peak RSS "),
    ("process exit, reaped", None),
)


def rbox_command() -> list[str]:
    """The installed command (bin/rbox, what a user runs), else `python -m rootless`."""
    script = os.path.join(os.path.dirname(sys.executable), "rbox")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "rootless"]


def candidates() -> dict[str, list[str]]:
    python = shutil.which("python3") or sys.executable
    found = {
        "rbox --net=none": [*rbox_command(), "run", "--net=none", "--", "true"],
        "rbox (slirp4netns)": [*rbox_command(), "run", "--net=slirp4netns", "--", "true"],
        "bwrap": ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"],
        "unshare": ["unshare", "-Urpfm", "--mount-proc", "true"],
        FLOOR: [python, "-I", "-S", "-c", "pass"],
        "python -I -c pass": [python, "-I", "-c", "pass"],
    }
    if not shutil.which("slirp4netns"):
        del found["rbox (slirp4netns)"]
    return {name: argv for name, argv in found.items() if shutil.which(argv[0]) or os.path.exists(argv[0])}


def precompile() -> None:
    """Write rbox's bytecode first: with PYTHONDONTWRITEBYTECODE set (or a read-only
    checkout) every run would otherwise compile the sources again, which an installed
    rbox (pip compiles at install time) never does."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("rootless")
    if spec and spec.submodule_search_locations:
        for where in spec.submodule_search_locations:
            compileall.compile_dir(where, quiet=1)


def time_once(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> float:
    start = time.perf_counter()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                       cwd=cwd)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"{argv[0]} failed ({r.returncode}): {r.stderr.decode(errors='replace').strip()}")
    return elapsed


class Sample:
    def __init__(self, wall: float, cpu: float, stderr: str, started: float):
        self.wall, self.cpu, self.stderr, self.started = wall, cpu, stderr, started


def run_once(argv: list[str]) -> Sample:
    """Wall time and CPU time of one run (wait4: the process and the descendants it
    reaped)."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    text = err.decode(errors="replace")
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}): {text.strip()[-500:]}")
    return Sample(wall, usage.ru_utime + usage.ru_stime, text, started)


def phases(sample: Sample) -> dict[str, float] | None:
    """Milliseconds per phase of one `rbox --debug run --net=none -- true`."""
    stamps: list[float] = []
    start_abs = None
    lines = sample.stderr.splitlines()
    for _, marker in PHASES:
        if marker is None:
            continue
        hit = next((line for line in lines if marker in line and line.startswith("[rbox:")), None)
        if hit is None:
            return None
        if marker == "started at ":
            start_abs = float(hit.split("started at ")[1].split()[0])
        stamps.append(float(hit.split("]")[0].split()[-1].removesuffix("ms")))
    if start_abs is None:
        return None
    edges = [0.0] + [(start_abs - sample.started) * 1000 + ms for ms in stamps] + [sample.wall * 1000]
    return {name: edges[i + 1] - edges[i] for i, (name, _) in enumerate(PHASES)}


def nested_userns_ms(sample: Sample) -> float | None:
    stamps = {}
    for line in sample.stderr.splitlines():
        for key in ("unshare user namespace (nested", "new session keyring"):
            if f"] + {key}" in line:
                stamps[key] = float(line.split("]")[0].split()[-1].removesuffix("ms"))
    if len(stamps) != 2:
        return None
    return stamps["new session keyring"] - stamps["unshare user namespace (nested"]


def peak_rss_kib(sample: Sample) -> int | None:
    """The rbox process's VmHWM, from its last --debug line (`exit 0, peak RSS 9876 kB`)."""
    for line in sample.stderr.splitlines():
        if "peak RSS " in line and line.endswith(" kB"):
            return int(line.rsplit(" ", 2)[1])
    return None


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def measure(rounds: int) -> dict[str, object]:
    cmds = candidates()
    debug_argv = [*rbox_command(), "--debug", "run", "--net=none", "--", "true"]
    for argv in [*cmds.values(), debug_argv]:
        run_once(argv)                      # warm caches, and fail early
    samples: dict[str, list[Sample]] = {name: [] for name in cmds}
    debug: list[Sample] = []
    for _ in range(rounds):
        for name, argv in cmds.items():
            samples[name].append(run_once(argv))
        debug.append(run_once(debug_argv))
    result: dict[str, object] = {"rounds": rounds, "commands": {name: " ".join(argv) for name, argv in cmds.items()}}
    medians = {}
    for name, values in samples.items():
        walls = [s.wall * 1000 for s in values]
        medians[name] = {"median_ms": statistics.median(walls), "p90_ms": p90(walls),
                         "cpu_ms": statistics.median(s.cpu * 1000 for s in values)}
    result["times"] = medians
    split = [p for p in (phases(s) for s in debug) if p is not None]
    result["phases_ms"] = {name: statistics.median(p[name] for p in split) for name, _ in PHASES} if split else {}
    nested = [n for n in (nested_userns_ms(s) for s in debug) if n is not None]
    result["nested_userns_ms"] = statistics.median(nested) if nested else None
    rss = [r for r in (peak_rss_kib(s) for s in debug) if r is not None]
    result["peak_rss_kib"] = max(rss) if rss else None
    result["ratios"] = ratios(medians)
    return result


def ratios(medians: dict[str, dict[str, float]]) -> dict[str, float]:
    """Same-run ratios: what --compare checks and what the targets are stated in."""
    out = {}
    rbox = medians["rbox --net=none"]
    for other, label in ((FLOOR, "python -I -S"), ("bwrap", "bwrap"), ("unshare", "unshare")):
        if other in medians:
            out[f"rbox / {label}"] = rbox["median_ms"] / medians[other]["median_ms"]
    if FLOOR in medians:
        out["cpu rbox / python -I -S"] = rbox["cpu_ms"] / medians[FLOOR]["cpu_ms"]
    if "rbox (slirp4netns)" in medians:
        out["slirp4netns / none"] = medians["rbox (slirp4netns)"]["median_ms"] / rbox["median_ms"]
        if FLOOR in medians:
            out["rbox (slirp4netns) / python -I -S"] = (medians["rbox (slirp4netns)"]["median_ms"]
                                                        / medians[FLOOR]["median_ms"])
    return out


def report(result: dict[str, object]) -> None:
    times: dict[str, dict[str, float]] = result["times"]  # type: ignore[assignment]
    print(f"{'command':<22} {'median':>9} {'p90':>9} {'cpu':>9}   ({result['rounds']} rounds, interleaved)")
    for name, t in times.items():
        print(f"{name:<22} {t['median_ms']:7.1f}ms {t['p90_ms']:7.1f}ms {t['cpu_ms']:7.1f}ms")
    print("\nratios (same run):")
    for name, value in result["ratios"].items():  # type: ignore[attr-defined]
        target = TARGETS.get(name)
        verdict = "" if target is None else f"   target <= {target:.2f}: {'ok' if value <= target else 'MISSED'}"
        print(f"  {name:<36} {value:6.2f}x{verdict}")
    rss = result.get("peak_rss_kib")
    if isinstance(rss, int):
        print(f"  {'peak RSS of the rbox process':<36} {rss / 1024:6.1f}MiB   target <= "
              f"{RSS_TARGET_KIB / 1024:.0f} MiB: {'ok' if rss <= RSS_TARGET_KIB else 'MISSED'}")
    split: dict[str, float] = result["phases_ms"]  # type: ignore[assignment]
    if split:
        print("\nwhere the time of `rbox --debug run --net=none -- true` goes (medians, ms):")
        for name, ms in split.items():
            print(f"  {ms:6.1f}  {name}")
        print(f"  {sum(split.values()):6.1f}  total (with --debug)")
    if result.get("nested_userns_ms") is not None:
        print(f"\nnested user namespace (init: unshare, mapped by stage-1, mount namespace, keyring): "
              f"{result['nested_userns_ms']:.1f}ms")
    print("\ncommands:")
    for name, argv in result["commands"].items():  # type: ignore[attr-defined]
        print(f"  {name}: {argv}")


def compare(result: dict[str, object], previous_file: str) -> list[str]:
    """The ratios (and the peak RSS) that grew by more than 10% since the previous run's JSON."""
    with open(previous_file) as f:
        previous = json.load(f)
    slower = []
    now: dict[str, float] = result["ratios"]  # type: ignore[assignment]
    for name, before in previous.get("ratios", {}).items():
        if name in now and now[name] > before * REGRESSION:
            slower.append(f"{name}: {before:.2f}x -> {now[name]:.2f}x (+{(now[name] / before - 1) * 100:.0f}%)")
    rss_before, rss_now = previous.get("peak_rss_kib"), result.get("peak_rss_kib")
    if isinstance(rss_before, int) and isinstance(rss_now, int) and rss_now > rss_before * REGRESSION:
        slower.append(f"peak RSS: {rss_before} kB -> {rss_now} kB")
    return slower


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=50)
    parser.add_argument("--json", metavar="OUT", help="write the figures as JSON (for a later --compare)")
    parser.add_argument("--compare", metavar="PREVIOUS.json",
                        help="exit 1 when a ratio grew by more than 10%% since that run")
    args = parser.parse_args()
    if os.geteuid() == 0:
        sys.exit("run the benchmark as an ordinary user: rootless start-up is what it measures")
    precompile()
    result = measure(args.rounds)
    report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.compare:
        slower = compare(result, args.compare)
        print(f"\ncompared with {args.compare}: " + ("; ".join(slower) if slower else "no ratio grew by more than 10%"))
        if slower:
            sys.exit(1)


if __name__ == "__main__":
    main()

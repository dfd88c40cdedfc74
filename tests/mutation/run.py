"""The mutation check: break each safety-critical line on purpose and see a test fail.

Runs in: the test runner's place, as the unprivileged test user (`.ci/run` runs it after
the suite): `python tests/mutation/run.py [--only TEXT] [--deselect NODEID] [--list]`.

Each mutation in mutations.py names a file, a text in it, what to replace that text with,
and the tests expected to catch the change. One at a time, on a scratch copy of the tree:

  1. copy the tree once to a scratch directory beside it (not under /tmp: the sandbox
     gets a private /tmp, and the tests' payload must be visible inside);
  2. check that every mutation still applies: its original text occurs exactly once. A
     mutation whose text has gone is a failure, so the list follows the code;
  3. run all named tests once on the unmutated copy: they must pass, none skipped (a
     skipped test would let every mutation "survive" for the wrong reason, or a missing
     capability make one look caught);
  4. for each mutation: apply it, run only its tests (pytest -x) against the copy, undo.
     Caught means a test failed; passing tests mean it survived.

The copy's own code is what runs: pytest starts in the copy with PYTHONPATH naming it,
and tests/integration/helpers.py starts rbox as `python -m rootless` with PYTHONPATH set
to the checkout it lives in, i.e. the copy. Step 0 verifies both before anything else.

Exit status 0 when every mutation was caught; the last line says
`mutations: N, caught: N, seconds: S`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from mutations import MUTATIONS, Mutation  # noqa: E402 - beside this file, not a package

TIMEOUT = 150.0      # per pytest run; the tests' own timeouts are shorter
IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".mutation-*", ".pytest_cache", ".mypy_cache",
                                ".ruff_cache", "*.egg-info", "build", "dist", "bench")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or any(o in m.name for o in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name}\n    {m.file}; caught by {', '.join(m.tests)}")
        return 0
    start = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix=".mutation-", dir=args.dir or ROOT))
    try:
        shutil.copytree(ROOT, scratch / "tree", ignore=IGNORE)
        tree = scratch / "tree"
        env = test_env(tree)
        check_the_copy_is_what_runs(tree, env)
        stale = [problem for m in chosen for problem in m.check(tree)]
        if stale:
            print("mutations that no longer apply (update tests/mutation/mutations.py):")
            print("".join(f"  {p}\n" for p in stale), end="")
            return summary(len(chosen), 0, start, ok=False)
        tests = sorted({t for m in chosen for t in m.tests})
        began = time.monotonic()
        failed = baseline(tree, env, tests, args.deselect)
        if failed:
            print("the named tests do not all pass on the unmutated tree:")
            print("".join(f"  {f}\n" for f in failed), end="")
            return summary(len(chosen), 0, start, ok=False)
        print(f"baseline: the {len(tests)} named tests pass on the unmutated copy "
              f"({time.monotonic() - began:.1f} s)", flush=True)
        caught = 0
        for m in chosen:
            caught += run_one(tree, env, m, args.deselect)
        return summary(len(chosen), caught, start, ok=caught == len(chosen))
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tests/mutation/run.py", description=__doc__.split("\n")[0])
    p.add_argument("--only", action="append", metavar="TEXT", help="only mutations whose name contains TEXT")
    p.add_argument("--deselect", action="append", default=[], metavar="NODEID",
                   help="leave this test out (to see the check fail when a test is missing)")
    p.add_argument("--list", action="store_true", help="list the mutations and their tests")
    p.add_argument("--keep", action="store_true", help="keep the scratch copy")
    p.add_argument("--dir", help="where to make the scratch copy (default: beside the tree; not under /tmp)")
    return p.parse_args(argv)


def test_env(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    # Skips are judged once, by the baseline; a mutant that breaks a probe must not count
    # as caught because RBOX_TEST_REQUIRE turned the probe's failure into a test failure.
    env.pop("RBOX_TEST_REQUIRE", None)
    return env


def check_the_copy_is_what_runs(tree: Path, env: dict[str, str]) -> None:
    for hidden in ("/tmp", "/var/tmp", "/run"):
        if str(tree).startswith(hidden + "/"):
            raise SystemExit(f"the scratch copy {tree} is under {hidden}, which the sandbox replaces: use --dir")
    code = ("import rootless, tests.integration.helpers as h\n"
            "print(rootless.__file__)\nprint(h.rbox_env(None)['PYTHONPATH'].split(':')[0])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=60)
    paths = r.stdout.split()
    if r.returncode != 0 or len(paths) != 2 or not all(p.startswith(str(tree)) for p in paths):
        raise SystemExit(f"the tests would not run the scratch copy's rbox: {r.stdout}{r.stderr}")


def pytest(tree: Path, env: dict[str, str], tests: list[str], deselect: list[str],
           first_failure: bool) -> tuple[int | None, ET.Element | None]:
    """(pytest's exit code or None on timeout, its JUnit XML report)."""
    report = tree / ".junit.xml"
    report.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--no-header", "-rN",
            f"--junitxml={report}", *(["-x"] if first_failure else []),
            *[a for d in deselect for a in ("--deselect", d)], *tests]
    # A session of its own, so that a run over its time is ended with its whole group.
    proc = subprocess.Popen(argv, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        code: int | None = proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = None
    return code, (ET.parse(report).getroot() if report.exists() else None)


def cases(report: ET.Element | None, outcome: str) -> list[str]:
    """The test ids with `outcome` (failure, error, skipped) in a JUnit XML report, each
    with the first line of its message."""
    found = []
    for case in report.iter("testcase") if report is not None else ():
        result = case.find(outcome)
        if result is not None:
            message = (result.get("message") or "").strip().split("\n")[0][:110]
            found.append(f"{case.get('classname')}::{case.get('name')}: {message}")
    return found


def baseline(tree: Path, env: dict[str, str], tests: list[str], deselect: list[str]) -> list[str]:
    code, report = pytest(tree, env, tests, deselect, first_failure=False)
    bad = [f"failed: {t}" for t in cases(report, "failure") + cases(report, "error")]
    bad += [f"skipped: {t}" for t in cases(report, "skipped")]
    if code != 0 and not bad:
        bad.append(f"pytest exited with {code}: " + ("no test ran (all of them deselected?)" if code == 5 else
                                                    "a test id that does not exist?"))
    return bad


def run_one(tree: Path, env: dict[str, str], m: Mutation, deselect: list[str]) -> bool:
    began = time.monotonic()
    before = m.apply(tree)
    try:
        code, report = pytest(tree, env, list(m.tests), deselect, first_failure=True)
    finally:
        m.undo(before)
    took = time.monotonic() - began
    failing = cases(report, "failure") + cases(report, "error")
    if code == 1 and failing:
        print(f"caught    {m.name} ({took:.1f} s)\n          by {failing[0].split('::', 1)[-1]}", flush=True)
        return True
    verdict = {0: "SURVIVED", None: "TIMEOUT"}.get(code, f"ERROR {code}")
    print(f"{verdict:<9} {m.name} ({took:.1f} s)\n          {m.file}: {m.original.strip()[:100]!r}\n"
          f"          tests: {' '.join(m.tests)}", flush=True)
    return False


def summary(total: int, caught: int, start: float, ok: bool) -> int:
    print(f"mutations: {total}, caught: {caught}, seconds: {time.monotonic() - start:.0f}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

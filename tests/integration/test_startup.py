"""Start-up stays lean (issue #17): a plain run loads no module it does not use.

No timing here (bench/startup.py measures); these tests only list what a run imports,
from the interpreter's own import log (-X importtime, PYTHONPROFILEIMPORTTIME).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.helpers import RBOX, RBOX_SCRIPT, rbox_env

# Modules a plain `rbox run --net=none -- true` must not load, and why each is costly or
# belongs to a feature the run does not use.
NOT_ON_A_PLAIN_RUN = (
    "enum",                  # through `signal`: rbox uses the built-in `_signal`
    "functools", "collections", "re", "typing", "argparse", "json", "socket", "subprocess", "dataclasses",
    "prctl",                 # python-prctl's pure-Python wrapper (only its C module `_prctl`)
    "rootless.instance", "rootless.image", "rootless.slurm", "rootless.config", "rootless.cgroups",
    "rootless.net.slirp", "rootless.net.pasta", "rootless.hostcheck",
)


def imported(argv: list[str], cwd: str | os.PathLike[str]) -> set[str]:
    """Every module the process imported, from its -X importtime log on stderr."""
    env = rbox_env({"PYTHONPROFILEIMPORTTIME": "1"})
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    names = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "rootless.parent" in names or "signal" in names, r.stderr[-2000:]
    return names


def test_the_probe_sees_what_signal_loads(tmp_path) -> None:
    """The positive control: the same log shows enum when `signal` is imported."""
    names = imported([sys.executable, "-c", "import signal"], tmp_path)
    assert {"enum", "functools"} <= names


@pytest.mark.parametrize("net", ["none", "default"])
def test_a_plain_run_loads_nothing_it_does_not_use(tmp_path, net: str) -> None:
    argv = [*RBOX, "run", *(["--net=none"] if net == "none" else []), "--", "true"]
    names = imported(argv, tmp_path)
    # `python -m` itself loads these (runpy, importlib.util, contextlib); the installed
    # command does not (the last test).
    allowed = {"functools", "collections"}
    if net == "default":
        allowed |= {"rootless.net.slirp"}
    assert {"rootless.parent", "rootless.init"} <= names
    assert sorted(names & set(NOT_ON_A_PLAIN_RUN) - allowed) == []


@pytest.mark.needs_install
def test_the_installed_command_loads_nothing_it_does_not_use(tmp_path) -> None:
    """The script pip installs (bin/rbox), not only `python -m rootless`."""
    names = imported([RBOX_SCRIPT, "run", "--net=none", "--", "true"], tmp_path)
    assert "rootless.parent" in names
    assert sorted(names & set(NOT_ON_A_PLAIN_RUN)) == []


BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "startup.py")


def test_the_benchmark_runs_and_flags_a_slowdown(tmp_path) -> None:
    """A smoke of bench/startup.py (one round; nothing about the figures is asserted),
    and its --compare: a previous run with ratios half as large is a regression."""
    import json

    out = tmp_path / "now.json"
    r = subprocess.run([sys.executable, BENCH, "-n", "1", "--json", str(out)], cwd=tmp_path, env=rbox_env(None),
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    now = json.loads(out.read_text())
    assert "rbox / python -I -S" in now["ratios"] and now["phases_ms"] and now["peak_rss_kib"] > 0
    assert "where the time of" in r.stdout
    previous = tmp_path / "previous.json"
    previous.write_text(json.dumps({"ratios": {name: value / 2 for name, value in now["ratios"].items()}}))
    same = tmp_path / "same.json"
    same.write_text(json.dumps({"ratios": now["ratios"]}))
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_startup", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.compare(now, str(same)) == []
    slower = bench.compare(now, str(previous))
    assert any(line.startswith("rbox / python -I -S: ") for line in slower), slower

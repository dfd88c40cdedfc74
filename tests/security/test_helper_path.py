"""Class 7 of issue #10: host helpers come only from absolute PATH entries.

An empty or relative PATH entry names the current directory, which a sandbox can
write: a `slirp4netns` planted there by an earlier sandbox would run on the host,
outside any sandbox. The planted helpers here write a marker file and fail; rbox must
never run them. The positive control runs the same files the way PATH lookup by a
shell would, and they do run. The command's own lookup inside the sandbox keeps the
shell's rules.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.helpers import RBOX, rbox_env, run_rbox

pytestmark = pytest.mark.needs_userns

HELPERS = ("slirp4netns", "pasta", "newuidmap", "newgidmap", "getsubids", "busctl", "systemd-run")
PLANT = """#!/bin/sh
echo "$0 $*" >> {marker}
exit 1
"""


def plant(where, marker) -> None:
    where.mkdir(exist_ok=True)
    for name in HELPERS:
        (where / name).write_text(PLANT.format(marker=marker))
        (where / name).chmod(0o755)


@pytest.mark.needs_slirp4netns
@pytest.mark.parametrize("path", [":/usr/bin:/bin", ".:/usr/bin:/bin", "/nonexistent::/usr/bin:/bin",
                                  "bin:/usr/bin:/bin", "./bin:/usr/bin:/bin"])
def test_planted_helpers_in_relative_path_entries_never_run(tmp_path, path: str) -> None:
    marker = tmp_path / "ran"
    plant(tmp_path, marker)
    plant(tmp_path / "bin", marker)
    env = {"PATH": path}
    r = run_rbox("run", "--", sys.executable, "-c", "print('inside')", cwd=tmp_path, env=env)
    assert (r.returncode, r.stdout) == (0, "inside\n"), r.stderr
    r = run_rbox("run", "--root", "--", "true", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    r = run_rbox("check", cwd=tmp_path, env=env)
    assert not marker.exists(), marker.read_text()


@pytest.mark.needs_pasta
def test_a_planted_pasta_never_runs(tmp_path) -> None:
    marker = tmp_path / "ran"
    plant(tmp_path, marker)
    r = run_rbox("run", "--net=pasta", "--", "true", cwd=tmp_path, env={"PATH": ":/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert not marker.exists(), marker.read_text()


def test_only_relative_entries_means_no_helper_at_all(tmp_path) -> None:
    marker = tmp_path / "ran"
    plant(tmp_path, marker)
    r = run_rbox("run", "--", "true", cwd=tmp_path, env={"PATH": "."})
    assert r.returncode == 125
    assert "rbox: error: slirp4netns is not installed" in r.stderr, r.stderr
    assert not marker.exists(), marker.read_text()


@pytest.mark.parametrize("path", [":/usr/bin:/bin", "bin:/usr/bin:/bin"])
def test_control_a_shell_with_that_path_runs_the_planted_file(tmp_path, path: str) -> None:
    marker = tmp_path / "ran"
    plant(tmp_path, marker)
    plant(tmp_path / "bin", marker)
    subprocess.run(["/bin/sh", "-c", "slirp4netns --help"], cwd=tmp_path, env={"PATH": path}, timeout=30)
    assert "slirp4netns --help" in marker.read_text()


def test_the_commands_own_lookup_keeps_the_shells_rules(tmp_path) -> None:
    (tmp_path / "mytool").write_text("#!/bin/sh\necho mine\n")
    (tmp_path / "mytool").chmod(0o755)
    r = subprocess.run([*RBOX, "run", "--net=none", "--", "mytool"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60, env=rbox_env({"PATH": f":{os.environ.get('PATH', '/usr/bin:/bin')}"}),
                       stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stdout) == (0, "mine\n"), r.stderr

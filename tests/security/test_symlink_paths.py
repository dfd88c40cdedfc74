"""Issue #10, class 5: paths through symlinks.

The attack: name a place through an alias (a symlink to it, or a path through a
symlinked parent directory) that is shallower than the place itself. Ordered by the path
as typed, the --hide or --ro-bind came before a bind of its ancestor (a later --bind, or
the cwd bind) and was covered by it: the hidden file was readable, the read-only
directory writable. Every path is now resolved once, on the host, and the plan ordered by
the resolved paths.

Each case has a positive control: without the protection, the same probe reads the
secret / writes the file, so a probe that cannot see them cannot pass.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile

import pytest

from rootless import mounts, options, spec
from rootless.errors import SpecError
from tests.integration.helpers import py, run_rbox

SECRET = "TOPSECRET"


class Tree:
    """Under a host-visible directory (the home, read-only inside; /tmp would be the
    sandbox's own): a deep project and two shallow aliases of each protected place."""

    def __init__(self, top: str):
        self.top = top
        self.project = f"{top}/a/b/c/proj"
        os.makedirs(f"{self.project}/ro")
        with open(f"{self.project}/secret", "w") as f:
            f.write(SECRET)
        os.symlink("a/b/c/proj", f"{top}/p")                  # a symlinked parent directory
        os.symlink("a/b/c/proj/secret", f"{top}/f")           # a symlink to the file
        os.symlink(f"{top}/a/b/c/proj/ro", f"{top}/r")        # a symlink to the directory
        self.elsewhere = f"{top}/elsewhere"                   # a neutral cwd
        os.mkdir(self.elsewhere)

    def alias(self, protection: str, how: str) -> str:
        if protection == "--hide":
            return f"{self.top}/f" if how == "link" else f"{self.top}/p/secret"
        return f"{self.top}/r" if how == "link" else f"{self.top}/p/ro"


@pytest.fixture
def tree():
    home = os.path.realpath(pwd.getpwuid(os.getuid()).pw_dir)
    top = tempfile.mkdtemp(prefix=".rbox-test-paths-", dir=home)
    yield Tree(top)
    shutil.rmtree(top)


def probe(tree: Tree, protection: str) -> list[str]:
    """Read the secret / write into the read-only directory, by its real path."""
    if protection == "--hide":
        return ["--", "sh", "-c", 'printf "read=%s\\n" "$(cat "$1" 2>/dev/null)"', "sh", f"{tree.project}/secret"]
    return py("write", f"{tree.project}/ro/new")


def run(tree: Tree, kind: str, how: str, via: str, protect: bool = True) -> str:
    """The probe for `kind`, with the protection named through the alias `how` (or
    without it), and the ancestor bound by a later --bind or as the cwd (`via`)."""
    args = ["run", "--net=none"]
    if protect:
        args += [kind, tree.alias(kind, how)]
    if via == "bind":
        args += ["--bind", tree.project]            # an ancestor, given later
    r = run_rbox(*args, *probe(tree, kind), cwd=tree.project if via == "cwd" else tree.elsewhere)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.needs_userns
@pytest.mark.parametrize("via", ["bind", "cwd"])
@pytest.mark.parametrize("how", ["link", "parent"])
def test_a_hidden_file_stays_hidden_whatever_alias_names_it(tree: Tree, how: str, via: str) -> None:
    assert run(tree, "--hide", how, via) == "read="


@pytest.mark.needs_userns
@pytest.mark.parametrize("via", ["bind", "cwd"])
@pytest.mark.parametrize("how", ["link", "parent"])
def test_a_read_only_directory_stays_read_only_whatever_alias_names_it(tree: Tree, how: str, via: str) -> None:
    assert run(tree, "--ro-bind", how, via) == "write=EROFS"
    assert not os.path.exists(f"{tree.project}/ro/new")


@pytest.mark.needs_userns
@pytest.mark.parametrize("via", ["bind", "cwd"])
def test_positive_control_without_the_protection_the_probes_succeed(tree: Tree, via: str) -> None:
    assert run(tree, "--hide", "link", via, protect=False) == f"read={SECRET}"
    assert run(tree, "--ro-bind", "link", via, protect=False) == "write=ok"
    assert os.path.exists(f"{tree.project}/ro/new")


@pytest.mark.needs_userns
def test_dry_run_shows_the_resolved_paths(tree: Tree) -> None:
    r = run_rbox("run", "--dry-run", "--hide", tree.alias("--hide", "link"), "--ro-bind",
                 tree.alias("--ro-bind", "parent"), "--", "true", cwd=tree.elsewhere)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"hide {tree.project}/secret (from --hide {tree.top}/f)" in lines
    assert f"bind {tree.project}/ro -> {tree.project}/ro [ro] (from --ro-bind {tree.top}/p/ro)" in lines


# The planner itself, on a fake file system (pure: no namespace, no mount).

def described(argv: list[str], cwd: str) -> list[str]:
    s = spec.from_parsed(options.parse(["run", "--net=none", *argv, "true"]), {}, cwd, False)
    return [op.describe().split(" (from ")[0] for op in mounts.optimize(mounts.plan(s))]


@pytest.fixture
def fake(fs):
    fs.create_file("/srv/w/a/b/proj/secret")
    fs.create_dir("/srv/w/a/b/proj/ro")
    fs.create_symlink("/srv/w/p", "a/b/proj")
    fs.create_symlink("/srv/w/f", "/srv/w/a/b/proj/secret")
    fs.create_symlink("/srv/w/up", "p/../..")                  # `..` after a symlink: /srv/w/a
    fs.create_dir("/data/real")
    fs.create_symlink("/data/abs", "/data/real")
    fs.create_symlink("/data/rel", "real")
    fs.create_symlink("/tmp/evil", "/etc")                     # another user's link in the host's /tmp
    fs.create_dir("/srv/cwd")
    return fs


def test_planner_orders_by_the_resolved_path(fake) -> None:
    lines = described(["--hide", "/srv/w/f", "--ro-bind", "/srv/w/p/ro", "--bind", "/srv/w/a/b/proj"], "/srv/cwd")
    assert "hide /srv/w/a/b/proj/secret" in lines
    bind = lines.index("bind /srv/w/a/b/proj -> /srv/w/a/b/proj [rw]")
    assert bind < lines.index("hide /srv/w/a/b/proj/secret")
    assert bind < lines.index("bind /srv/w/a/b/proj/ro -> /srv/w/a/b/proj/ro [ro]")


def test_planner_puts_the_cwd_bind_before_an_alias_below_it(fake) -> None:
    lines = described(["--hide", "/srv/w/p/secret"], "/srv/w/a/b/proj")
    assert lines.index("bind /srv/w/a/b/proj -> /srv/w/a/b/proj [rw]") < lines.index("hide /srv/w/a/b/proj/secret")


def test_at_equal_resolved_path_the_later_option_wins(fake) -> None:
    lines = described(["--ro-bind", "/srv/w/p/ro", "--bind", "/srv/w/a/b/proj/ro"], "/srv/cwd")
    assert lines.index("bind /srv/w/a/b/proj/ro -> /srv/w/a/b/proj/ro [ro]") < \
        lines.index("bind /srv/w/a/b/proj/ro -> /srv/w/a/b/proj/ro [rw]")


def test_dot_dot_is_taken_after_the_symlink(fake) -> None:
    assert "tmpfs /srv/w/a/x [mode=0755]" in described(["--tmpfs", "/srv/w/up/x"], "/srv/cwd")


def test_the_hosts_links_under_a_sandbox_tmpfs_are_not_followed(fake) -> None:
    lines = described(["--tmpfs", "/tmp/evil/x"], "/srv/cwd")
    assert "tmpfs /tmp/evil/x [mode=0755]" in lines and not any("/etc/x" in line for line in lines)
    # Below a user's --tmpfs, too: whatever the host has there is not inside.
    fake.create_dir("/srv/cwd/scratch")
    fake.create_symlink("/srv/cwd/scratch/evil", "/etc/passwd")
    lines = described(["--tmpfs", "/srv/cwd/scratch", "--hide", "/srv/cwd/scratch/evil"], "/srv/cwd")
    assert "hide /srv/cwd/scratch/evil" in lines


def test_below_a_bind_a_path_continues_in_the_source(fake) -> None:
    lines = described(["--hide", "/opt/d/abs/x", "--hide", "/opt/d/rel/y", "--bind", "/data:/opt/d"], "/srv/cwd")
    # An absolute link in the source points into the sandbox's `/`; a relative one stays below the bind.
    assert "hide /data/real/x" in lines and "hide /opt/d/real/y" in lines


def test_an_explicit_protection_above_the_cwd_wins_over_the_cwd_bind(fake) -> None:
    lines = described(["--ro-bind", "/srv/w/p"], "/srv/w/a/b/proj/ro")
    assert not any(line.endswith("[rw]") for line in lines)


def test_options_that_resolve_to_the_root_are_refused(fake) -> None:
    fake.create_symlink("/srv/root", "/")
    with pytest.raises(SpecError, match="--tmpfs cannot replace the sandbox's `/`"):
        described(["--tmpfs", "/srv/root"], "/srv/cwd")


def test_symlink_loops_are_an_error(fake) -> None:
    fake.create_symlink("/srv/loop", "/srv/loop")
    with pytest.raises(SpecError, match="too many levels of symbolic links"):
        described(["--hide", "/srv/loop/x"], "/srv/cwd")

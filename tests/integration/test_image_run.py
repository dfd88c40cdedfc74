"""`rbox run --rootfs DIR` and `rbox run --image NAME`: another userland as `/`, read-only,
with the protections of every sandbox (the cwd by the containment rules, the home
read-only, a private /tmp, a fresh /proc, a minimal /dev, /etc/hosts) and an entry for
you in its passwd and group.

The image is a busybox-static tree (Debian's busybox-static, .ci/setup-host), made here;
as an image it is imported from an OCI layout written by the test (no network).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pwd
import tarfile
from pathlib import Path

import pytest

from tests.integration.helpers import busybox_rootfs, run_rbox

pytestmark = pytest.mark.needs_userns

APPLETS = ("sh", "cat", "id", "whoami", "ls", "touch", "pwd", "env", "echo", "stat", "hostname", "mount")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_rootfs(tmp_path_factory.mktemp("image") / "rootfs", APPLETS)


def inside(tree: Path, script: str, *options: str, cwd: Path | None = None,
           env: dict[str, str] | None = None) -> tuple[int, str, str]:
    r = run_rbox("run", "--rootfs", str(tree), *options, "--", "/bin/sh", "-c", script, cwd=cwd or tree.parent,
                 env=env)
    return r.returncode, r.stdout, r.stderr


def test_the_userland_really_changes(tree: Path) -> None:
    host = Path("/etc/os-release").read_text()
    code, out, err = inside(tree, "cat /etc/os-release; ls /usr/bin 2>&1 | head -1")
    assert code == 0, err
    assert out.splitlines()[0] == "ID=rbox-busybox" and "ID=rbox-busybox" not in host
    assert "No such file or directory" in out          # the host's /usr is not there


def test_id_and_whoami_name_you(tree: Path) -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    code, out, err = inside(tree, "whoami; id -u; id -un")
    assert code == 0, err
    assert out.split() == [me, str(os.getuid()), me]
    code, out, err = inside(tree, "whoami; id -u", "--root")
    assert code == 0, err
    assert out.split() == ["root", "0"]


def test_read_only_keeps_the_image_read_only_and_unchanged(tree: Path) -> None:
    before = sorted(str(p) for p in tree.rglob("*"))
    code, out, err = inside(tree, "for p in /newfile /bin/newfile /etc/passwd /home/x /work/x; do "
                                  "touch $p 2>/dev/null && echo wrote $p; done; echo done", "--read-only")
    assert code == 0, err
    assert out.split() == ["done"]
    assert sorted(str(p) for p in tree.rglob("*")) == before


def test_root_cannot_remount_the_image_writable(tree: Path) -> None:
    code, out, err = inside(tree, "mount -o remount,rw / 2>&1; mount -o remount,rw /bin 2>&1; "
                                  "touch /bin/x 2>&1 || echo still-ro", "--root", "--read-only")
    assert out.strip().endswith("still-ro"), out + err


def test_protections_as_without_an_image(tree: Path, tmp_path: Path) -> None:
    """The project directory is writable and really the host's; the home read-only;
    /tmp private; /proc shows the sandbox's processes; /dev is minimal; /etc/hosts
    names the sandbox."""
    project = tmp_path / "project"
    project.mkdir()
    home = pwd.getpwuid(os.getuid()).pw_dir
    script = ("pwd; echo data > out; touch /tmp/private; "
              f"touch {home}/rbox-image-test 2>/dev/null && echo home-written; "
              "ls /proc | grep -c '^[0-9]'; ls /dev | tr '\\n' ' '; echo; grep -c rbox /etc/hosts")
    code, out, err = inside(tree, script, cwd=project)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == str(project)
    assert (project / "out").read_text() == "data\n"
    assert not Path("/tmp/private").exists()
    assert "home-written" not in out and not Path(home, "rbox-image-test").exists()
    assert int(lines[1]) <= 4                            # sh, ls, grep and init: not the host's
    assert lines[2].split() == ["fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
                                "stdout", "tty", "urandom", "zero"]
    assert int(lines[3]) >= 1


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def imported(tree: Path, tmp_path: Path) -> dict[str, str]:
    """The tree as image `bb`, with a config, in a store of the test's own."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        tar.add(tree, arcname=".")
    layer_bytes = layer.getvalue()
    config = json.dumps({"config": {"Env": ["PATH=/bin", "IMAGE_VAR=from-image", "OTHER=image"],
                                    "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo $IMAGE_VAR $OTHER; pwd"],
                                    "WorkingDir": "/work"}}).encode()
    blobs = tmp_path / "layout/blobs/sha256"
    blobs.mkdir(parents=True)
    for data in (layer_bytes, config):
        (blobs / sha(data)[7:]).write_bytes(data)
    manifest = json.dumps({"schemaVersion": 2, "config": {"digest": sha(config), "size": len(config)},
                           "layers": [{"digest": sha(layer_bytes), "size": len(layer_bytes)}]}).encode()
    (blobs / sha(manifest)[7:]).write_bytes(manifest)
    (tmp_path / "layout/index.json").write_text(json.dumps({"manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest)}]}))
    (tmp_path / "layout/oci-layout").write_text("{}")
    env = {"RBOX_STORAGE": str(tmp_path / "store")}
    r = run_rbox("image", "import", str(tmp_path / "layout"), "bb", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return env


def test_image_runs_its_entrypoint_in_its_workdir(imported: dict[str, str], tmp_path: Path) -> None:
    r = run_rbox("run", "--image", "bb", env=imported, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["from-image image", "/work"]


def test_your_env_wins_over_the_image(imported: dict[str, str], tmp_path: Path) -> None:
    r = run_rbox("run", "--image", "bb", "-e", "IMAGE_VAR=mine", "-w", "/", "--", "sh", "-c",
                 "echo $IMAGE_VAR $OTHER; pwd; cat /etc/os-release", env=imported, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["mine image", "/", "ID=rbox-busybox"]


@pytest.mark.parametrize(("args", "message"), [
    (["--rootfs", "/nonexistent"], "--rootfs `/nonexistent` is not a directory"),
    (["--rootfs", "/"], "--rootfs / is the host's root"),
    (["--image", "missing"], "no image `missing`"),
    (["--image", "x", "--rootfs", "/tmp"], "--rootfs and --image exclude each other"),
])
def test_image_option_errors(tmp_path: Path, args: list[str], message: str) -> None:
    r = run_rbox("run", *args, "--", "true", env={"RBOX_STORAGE": str(tmp_path / "store")}, cwd=tmp_path)
    assert r.returncode == 125
    assert message in r.stderr and "hint: " in r.stderr


def test_rbox_sh_in_an_image_without_your_shell_uses_its_sh(tree: Path) -> None:
    import pwd

    login = pwd.getpwuid(os.getuid()).pw_shell
    assert not (tree / login.lstrip("/")).exists(), f"the busybox tree must lack {login} for this test"
    r = run_rbox("sh", "--rootfs", str(tree), "-c", 'echo "$0"; cat /etc/os-release', cwd=tree.parent)
    assert (r.returncode, r.stdout) == (0, "/bin/sh\nID=rbox-busybox\n"), r.stderr


def test_destinations_resolve_through_the_image_not_the_host(tree: Path, tmp_path: Path) -> None:
    """With an image, `/` is the image: a destination through one of its symlinks is
    planned where the image's link leads (the host has no such link)."""
    (tree / "opt" / "real").mkdir(parents=True, exist_ok=True)
    if not (tree / "opt" / "link").is_symlink():
        os.symlink("real", tree / "opt" / "link")
    assert not os.path.lexists("/opt/link")
    r = run_rbox("run", "--rootfs", str(tree), "--dry-run", "--tmpfs", "/opt/link/t", "--", "/bin/sh",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "tmpfs /opt/real/t [mode=0755] (from --tmpfs /opt/link/t)" in r.stdout
    # Control: without the image, the host has no such link and the path stays as typed.
    r = run_rbox("run", "--dry-run", "--tmpfs", "/opt/link/t", "--", "true", cwd=tmp_path)
    assert "tmpfs /opt/link/t [mode=0755]" in r.stdout


def test_home_is_shown_read_only_in_an_image(tree: Path) -> None:
    """With an image, your home is there read-only, as without one: rbox started in it
    works there (its files readable, not writable); `--home rw` is the control: the same
    write then reaches the host."""
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    probe = home / ".rbox-image-home-probe"
    probe.write_text("host home\n")
    try:
        script = f"pwd; cat {probe}; echo x >> {probe} 2>/dev/null && echo written; true"
        code, out, err = inside(tree, script, cwd=home)
        assert code == 0, err
        assert out.splitlines()[:2] == [str(home), "host home"] and "written" not in out
        assert probe.read_text() == "host home\n"
        code, out, err = inside(tree, script, "--home", "rw", cwd=home)
        assert code == 0 and "written" in out, (out, err)
        assert probe.read_text() == "host home\nx\n"
    finally:
        probe.unlink()

"""`rbox check`: every requirement of the host, one finding each, with the exact fix.

Runs in: parent.

Each check is a function of its inputs (paths, environment) returning a Finding, so
that every broken host condition has a unit test. The fix texts live here (FIX) and the
runtime errors use the same ones, so `rbox check` and an error's hint never disagree.
Exit status: 0 when rbox can run with its defaults (a `fail` means it cannot), 1 if not.
"""

from __future__ import annotations

import os
import pwd
import stat

from rootless import userns

FIX = {
    "userns_sysctl": "an administrator can set it in /etc/sysctl.d (helpers/sysctl.d/99-rbox-userns.conf "
                     "explains each setting) and run `sysctl --system`",
    "subids": "an administrator can run `helpers/rbox-add-subids {user}` (a free 65536-id range)",
    "uidmap": "an administrator can install the Debian package `uidmap`",
    "setuid": "an administrator can run `chmod u+s {path}` (it must be owned by root)",
    "nnp": "start rbox from a session without no_new_privs (not from inside another sandbox or a "
           "NoNewPrivileges= service)",
    "slirp4netns": "an administrator can install the Debian package `slirp4netns`; --net=none runs without it",
    "pasta": "an administrator can install the Debian package `passt` (only --net=pasta needs it)",
    "tun": "an administrator can run `chmod 0666 /dev/net/tun` (udev's default on Debian)",
    "tun_missing": "an administrator can load the tun module (`modprobe tun`), which creates /dev/net/tun; "
                   "--net=none runs without it",
    "no_systemd": "none on this machine: limits need a host whose init system is systemd (everything else "
                  "works without it)",
    "cgroup2": "an administrator can boot with systemd.unified_cgroup_hierarchy=1 (limits only)",
    "manager": "log in with a session (ssh or login, not su/sudo), or an administrator can run "
               "`loginctl enable-linger {user}` (limits only)",
    "delegate": "an administrator can install helpers/user@.service.d/delegate.conf as "
                "/etc/systemd/system/user@.service.d/delegate.conf (limits only)",
    "runtime_dir": "log in with a session that sets XDG_RUNTIME_DIR (pam_systemd does)",
    "apparmor": "an administrator can install helpers/apparmor.d/rbox as /etc/apparmor.d/rbox (with the path of "
                "your rbox in it) and run `apparmor_parser -r /etc/apparmor.d/rbox`; or set "
                "kernel.apparmor_restrict_unprivileged_userns=0 for every program "
                "(helpers/sysctl.d/99-rbox-userns.conf)",
    "kernel": "rbox needs Linux 4.18 or later (RHEL 8's kernel): run it on a newer host",
    "seccomp": "an administrator can use a kernel built with CONFIG_SECCOMP_FILTER (distribution kernels are)",
    "fuse-overlayfs": "an administrator can install the Debian package `fuse-overlayfs` (and make /dev/fuse mode "
                      "0666); --read-only runs without overlays",
    "squashfuse": "an administrator can install the Debian package `squashfuse` (and make /dev/fuse mode 0666); only "
                  "--image FILE.sqfs needs it",
}
WANTED_CONTROLLERS = ("cpu", "io", "memory", "pids")


class Finding:
    __slots__ = ("name", "status", "detail", "fix")

    def __init__(self, name: str, status: str, detail: str, fix: str = ""):
        self.name, self.status, self.detail, self.fix = name, status, detail, fix

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def apparmor_userns_restricted(proc: str = "/proc") -> str | None:
    """Ubuntu 23.10 and later: with kernel.apparmor_restrict_unprivileged_userns=1 a
    program may create a user namespace, but without any capability in it (so no mount,
    no id map of its own), unless its AppArmor profile says `userns,`. None when that
    does not apply to this process; else what is in the way, in words.

    Applies when the sysctl is 1, AppArmor is enabled, and this process runs unconfined
    (a profile of its own, such as helpers/apparmor.d/rbox, decides for itself)."""
    if _read(f"{proc}/sys/kernel/apparmor_restrict_unprivileged_userns") != "1":
        return None
    if _read("/sys/module/apparmor/parameters/enabled") == "N":
        return None
    label = _read(f"{proc}/self/attr/apparmor/current") or _read(f"{proc}/self/attr/current") or "unconfined"
    if label.split(" ")[0] != "unconfined":
        return None
    return ("kernel.apparmor_restrict_unprivileged_userns is 1 (Ubuntu's AppArmor restriction) and rbox runs "
            "without an AppArmor profile that allows user namespaces")


def check_userns_sysctls(proc: str = "/proc/sys") -> Finding:
    name = "user namespaces allowed"
    rules = (("user/max_user_namespaces", "0", "user.max_user_namespaces is 0"),
             ("kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone is 0"))
    for path, bad, text in rules:
        if _read(f"{proc}/{path}") == bad:
            return Finding(name, "fail", text, FIX["userns_sysctl"])
    restricted = apparmor_userns_restricted(proc.removesuffix("/sys"))
    if restricted:
        return Finding(name, "fail", restricted, FIX["apparmor"])
    return Finding(name, "ok", f"user.max_user_namespaces = {_read(f'{proc}/user/max_user_namespaces')}")


def check_userns_works() -> Finding:
    """The real test: a child tries unshare(CLONE_NEWUSER)."""
    name = "user namespace creation"
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            from rootless import syscalls

            syscalls.unshare(syscalls.CLONE_NEWUSER)
            code = 1
            # A mount namespace too: under Ubuntu's AppArmor restriction the user
            # namespace is created, but without the capabilities to make one.
            syscalls.unshare(syscalls.CLONE_NEWNS)
            code = 0
        except OSError as e:
            code = 100 + (e.errno or 0) % 100
        finally:
            os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code == 0:
        return Finding(name, "ok", "works")
    reason = os.strerror(code - 100) if code >= 100 else "failed"
    restricted = apparmor_userns_restricted()
    return Finding(name, "fail", f"unshare(CLONE_NEWUSER, then CLONE_NEWNS): {reason}",
                   FIX["apparmor"] if restricted else FIX["userns_sysctl"])


def check_subids(user: str, uid: int, path: str | None, subuid: str = userns.SUBUID) -> Finding:
    name = "subordinate ids"
    ranges = userns.subid_ranges(user, uid, path, subuid, "u")
    if ranges:
        total = sum(count for _, count in ranges)
        return Finding(name, "ok", f"{total} uids in {len(ranges)} range(s)")
    return Finding(name, "warn", f"none for `{user}`: rbox maps only your own uid (chown to other ids fails)",
                   FIX["subids"].format(user=user))


def check_helper(tool: str, path: str | None) -> Finding:
    name = tool
    found = userns.which(tool, path)
    if found is None:
        return Finding(name, "warn", "not found: rbox falls back to a single-id map", FIX["uidmap"])
    st = os.stat(found)
    setuid_root = bool(st.st_mode & stat.S_ISUID) and st.st_uid == 0
    try:
        has_caps = bool(os.getxattr(found, "security.capability"))
    except OSError:
        has_caps = False
    if setuid_root or has_caps:
        return Finding(name, "ok", f"{found} ({'setuid root' if setuid_root else 'file capabilities'})")
    return Finding(name, "fail", f"{found} is neither setuid root nor has file capabilities: it cannot map ids",
                   FIX["setuid"].format(path=found))


def check_no_new_privs(status: str = "/proc/self/status") -> Finding:
    name = "no_new_privs"
    if userns.no_new_privs_set(status):
        return Finding(name, "warn", "set on this session: setuid helpers cannot work, rbox maps only your own uid",
                       FIX["nnp"])
    return Finding(name, "ok", "not set")


def check_slirp4netns(path: str | None) -> Finding:
    name = "slirp4netns (default network)"
    found = userns.which("slirp4netns", path)
    if found is None:
        return Finding(name, "fail", "not installed", FIX["slirp4netns"])
    from rootless import spawn
    from rootless.net import slirp

    code, text = spawn.run([found, "--version"], 5.0, whole=True)
    version = text.splitlines()[0] if text.strip() else "unknown version"
    _, help_text = spawn.run([found, "--help"], 5.0, whole=True)
    features = slirp.detect_features(help_text)
    try:
        slirp.check_features(features, allow_host_loopback=False, publish=True)
    except Exception as e:  # noqa: BLE001 - the message is the finding
        return Finding(name, "fail", str(getattr(e, "message", e)), FIX["slirp4netns"])
    extra = " ".join(f for f in ("--enable-sandbox", "--enable-seccomp") if f in features)
    return Finding(name, "ok", f"{version}{'; ' + extra if extra else ''}")


def check_pasta(path: str | None) -> Finding:
    found = userns.which("pasta", path)
    if found is None:
        return Finding("pasta", "warn", "not installed", FIX["pasta"])
    return Finding("pasta", "ok", found)


def check_tun(device: str = "/dev/net/tun") -> Finding:
    name = device
    if os.access(device, os.R_OK | os.W_OK):
        return Finding(name, "ok", "usable")
    try:
        mode = stat.S_IMODE(os.stat(device).st_mode)
    except OSError:
        return Finding(name, "fail", "missing: slirp4netns and pasta cannot start", FIX["tun_missing"])
    return Finding(name, "fail", f"not usable by you (mode {mode:04o}): slirp4netns and pasta cannot start",
                   FIX["tun"])


def check_squashfuse(path: str | None, fuse_device: bool) -> Finding:
    found = userns.which("squashfuse", path)
    if found is None or not fuse_device:
        why = "not installed" if found is None else "/dev/fuse is missing or not usable by you"
        return Finding("squashfuse", "warn", f"{why}: --image FILE.sqfs needs it", FIX["squashfuse"])
    return Finding("squashfuse", "ok", found)


def check_overlay(reason: str | None, forced: str, fuse_overlayfs: str | None, fuse_device: bool) -> Finding:
    """Which overlay driver this host uses (overlay.py): the kernel's overlayfs where the
    probe (`reason` None) says it works, else fuse-overlayfs (pure)."""
    name = "kernel: overlayfs in a user namespace (Linux 5.11)"
    fuse = fuse_overlayfs is not None and fuse_device
    if forced == "fuse" or (forced != "kernel" and reason is not None):
        why = "RBOX_OVERLAY=fuse" if forced == "fuse" else f"absent ({reason})"
        if fuse:
            return Finding(name, "ok", f"{why}: overlays (a writable image, --persist, --overlay) use "
                                       f"fuse-overlayfs ({fuse_overlayfs}), slower")
        missing = "not installed" if fuse_overlayfs is None else "installed, but /dev/fuse is not usable"
        return Finding(name, "warn", f"{why}, and fuse-overlayfs is {missing}: a writable image, --persist and "
                                     "--overlay are unavailable", FIX["fuse-overlayfs"])
    why = "RBOX_OVERLAY=kernel" if forced == "kernel" else "present"
    return Finding(name, "ok", f"{why}: overlays (a writable image, --persist, --overlay) use the kernel's overlayfs")


def init_system(comm: str = "/proc/1/comm", booted: str = "/run/systemd/system") -> str | None:
    """None when systemd is the init system (sd_booted(3) tests the directory), else the
    name of PID 1. Limits need systemd's user manager: elsewhere, no fix that assumes
    one (log in again, enable-linger, a kernel option for systemd) can work."""
    if os.path.isdir(booted):
        return None
    return _read(comm) or "unknown"


def check_init_system(pid1: str | None) -> Finding:
    if pid1 is None:
        return Finding("init system", "ok", "systemd")
    return Finding("init system", "warn", f"PID 1 is `{pid1}`, not systemd: resource limits are unavailable "
                   "(they need systemd's user manager)", FIX["no_systemd"])


def cgroup2_mounts(mountinfo: str) -> list[str]:
    """Where cgroup2 file systems are mounted, from mountinfo text (pure)."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split(" - ")
        if len(fields) == 2 and len(fields[0].split()) > 4 and fields[1].split()[:1] == ["cgroup2"]:
            found.append(fields[0].split()[4])
    return found


def check_cgroup2(mountinfo: str = "/proc/self/mountinfo", pid1: str | None = None) -> Finding:
    places = cgroup2_mounts(_read(mountinfo) or "")
    if "/sys/fs/cgroup" in places:
        return Finding("cgroup v2", "ok", "mounted at /sys/fs/cgroup")
    where = (f"mounted at {', '.join(places)} (a hybrid v1/v2 layout), not at /sys/fs/cgroup" if places
             else "not mounted")
    return Finding("cgroup v2", "warn", f"{where}: resource limits are unavailable",
                   FIX["cgroup2"] if pid1 is None else FIX["no_systemd"])


def check_slurm_job(environ: dict[str, str]) -> Finding | None:
    """Inside a Slurm job (slurm.py): limits are Slurm's to set; None outside one."""
    from rootless import slurm

    job = slurm.job_id(environ)
    if job is None:
        return None
    return Finding("Slurm job", "ok", f"job {job} on {environ.get('SLURMD_NODENAME')}: Slurm sets its limits "
                   "(srun/sbatch --mem, --cpus-per-task); rbox's own nest only under a job cgroup delegated to you")


def check_user_manager(environ: dict[str, str], user: str) -> Finding:
    name = "systemd user manager"
    runtime = environ.get("XDG_RUNTIME_DIR")
    bus = (environ.get("DBUS_SESSION_BUS_ADDRESS") or (f"unix:path={runtime}/bus" if runtime else ""))
    if runtime and os.path.exists(bus.removeprefix("unix:path=")):
        return Finding(name, "ok", f"session bus at {bus.removeprefix('unix:path=')}")
    reason = "XDG_RUNTIME_DIR is not set" if not runtime else f"no session bus at {runtime}/bus"
    return Finding(name, "warn", f"not reachable ({reason}): resource limits are unavailable",
                   FIX["manager"].format(user=user))


def check_delegation(uid: int, root: str = "/sys/fs/cgroup") -> Finding:
    name = "delegated controllers"
    controllers = _read(f"{root}/user.slice/user-{uid}.slice/user@{uid}.service/cgroup.controllers")
    if controllers is None:
        return Finding(name, "warn", f"no user@{uid}.service cgroup: resource limits are unavailable",
                       FIX["delegate"])
    missing = [c for c in WANTED_CONTROLLERS if c not in controllers.split()]
    if missing:
        return Finding(name, "warn", f"{controllers or 'none'}; missing {' '.join(missing)}", FIX["delegate"])
    return Finding(name, "ok", controllers)


def check_runtime_dir(environ: dict[str, str], pid1: str | None = None) -> Finding:
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime and os.access(runtime, os.W_OK):
        return Finding("XDG_RUNTIME_DIR", "ok", runtime)
    reason = "not set" if not runtime else f"{runtime} is not writable"
    from rootless import state

    detail = f"{reason}: rbox keeps its state in {state.base_path({})} (its own, mode 0700)"
    if pid1 is not None:
        return Finding("XDG_RUNTIME_DIR", "ok", detail)    # nothing sets it without systemd: no fix
    return Finding("XDG_RUNTIME_DIR", "warn", detail, FIX["runtime_dir"])


def cgroup_child(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """A non-root directory of the host's cgroup v2 tree (where cgroup.kill would be)."""
    for place in cgroup2_mounts(_read(mountinfo) or ""):
        try:
            with os.scandir(place) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        return entry.path
        except OSError:
            continue
    return None


def check_kernel(release: str, found: dict[str, bool | None]) -> list[Finding]:
    """The kernel's version against the floor, then each facility newer than the floor
    (or one rbox can do without): present, or absent and what rbox does instead (pure)."""
    from rootless import kernel

    if kernel.below_floor(release):
        head = Finding("kernel", "fail", f"Linux {release}: older than {kernel.FLOOR}", FIX["kernel"])
    else:
        head = Finding("kernel", "ok", f"Linux {release} (rbox needs {kernel.FLOOR} or later)")
    out = [head]
    for name, since, with_it, without in kernel.FACILITIES:
        title = f"kernel: {name} (Linux {since})"
        have = found.get(name)
        if have is None:
            out.append(Finding(title, "ok", "cannot tell here (no cgroup v2 directory to look in); without it: "
                               + without))
        elif have:
            out.append(Finding(title, "ok", f"present: {with_it}"))
        elif name == "seccomp filters":
            out.append(Finding(title, "warn", f"absent: {without}", FIX["seccomp"]))
        else:
            out.append(Finding(title, "ok", f"absent: {without}"))
    return out


def check_all(environ: dict[str, str]) -> list[Finding]:
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    path = environ.get("PATH")
    pid1 = init_system()
    fuse_device = os.access("/dev/fuse", os.R_OK | os.W_OK)
    findings = [check_userns_sysctls(), check_userns_works(), check_subids(user, uid, path),
                check_helper("newuidmap", path), check_helper("newgidmap", path), check_no_new_privs(),
                check_slirp4netns(path), check_pasta(path), check_tun(), check_squashfuse(path, fuse_device),
                check_init_system(pid1), check_cgroup2(pid1=pid1)]
    job = check_slurm_job(environ)
    if job is not None:
        findings.append(job)
    elif pid1 is None:
        # Only where systemd runs do a user manager and its delegation mean anything (and
        # not inside a Slurm job, where limits are Slurm's and no session sets anything).
        findings += [check_user_manager(environ, user), check_delegation(uid)]
    from rootless import kernel

    findings.append(check_runtime_dir(environ, pid1 if job is None else pid1 or "slurmstepd"))
    from rootless import overlay

    forced = environ.get(overlay.ENV, "")
    driver = check_overlay(None if forced else overlay.kernel_probe(), forced, userns.which("fuse-overlayfs", path),
                           fuse_device)
    return findings + check_kernel(kernel.release(), kernel.survey(cgroup_child())) + [driver]


def render(findings: list[Finding]) -> str:
    lines = []
    for f in findings:
        if f.name == "kernel":
            lines.append("")      # the kernel's facilities: a section of their own
        lines.append(f"{f.status:<4}  {f.name}: {f.detail}")
        if f.status != "ok":
            lines.append(f"      fix: {f.fix}")
    return "\n".join(lines) + "\n"


def run(as_json: bool) -> int:
    findings = check_all(dict(os.environ))
    from rootless import log

    if as_json:
        import json

        log.out(json.dumps([f.as_dict() for f in findings], indent=2) + "\n")
    else:
        log.out(render(findings))
    return 1 if any(f.status == "fail" for f in findings) else 0

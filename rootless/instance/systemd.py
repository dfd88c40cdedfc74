"""A detached sandbox and the systemd user session: a scope of its own, and whether logging
out will end it.

Runs in: parent (the caller's rbox before it detaches, and the supervisor right after).

Where PID 1 is not systemd (no /run/systemd/system: sd_booted(3)), no logind rule applies
and nothing here runs or says anything: such a host (this project's CI) keeps a detached
sandbox running after logout.

Under systemd, logind ends every process of a session when the session ends if
KillUserProcesses=yes (logind.conf(5); Debian's default is no). A process in a scope of the
user manager (user@UID.service) is not part of the session; it lives as long as the user
manager, which outlives the last session only when the user lingers (`loginctl
enable-linger`). So the supervisor asks the user manager for a transient scope of its own
(StartTransientUnit through busctl, as cgroups.py does for limits; with limits it is in
one already), and `run -d` warns at start when logging out will still end the sandbox:
KillUserProcesses=yes, the user not excluded, and no linger (or no user manager to move to).
The files logind reads are read here (a few small files; no D-Bus round trip).
"""

from __future__ import annotations

import os

from rootless import log

BOOTED = "/run/systemd/system"
LINGER = "/var/lib/systemd/linger"


def booted() -> bool:
    return os.path.isdir(BOOTED)


def user_bus() -> str | None:
    """The user manager's bus address, when its socket exists."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    bus = os.environ.get("DBUS_SESSION_BUS_ADDRESS") or (f"unix:path={runtime}/bus" if runtime else "")
    path = bus.removeprefix("unix:path=").split(",")[0]
    return bus if path.startswith("/") and os.path.exists(path) else None


def logind_setting(name: str, texts: list[str]) -> str | None:
    """The value of `name` in logind.conf's [Login] section across `texts` (the main file,
    then the drop-ins in order: the last one wins, as logind reads them). Pure."""
    value = None
    for text in texts:
        section = ""
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
            elif section == "Login" and "=" in line and not line.startswith(("#", ";")):
                key, _, found = line.partition("=")
                if key.strip() == name:
                    value = found.strip()
    return value


def _logind_texts() -> list[str]:
    paths = []
    for base in ("/usr/lib/systemd", "/etc/systemd"):
        paths.append(os.path.join(base, "logind.conf"))
    for base in ("/usr/lib/systemd/logind.conf.d", "/run/systemd/logind.conf.d", "/etc/systemd/logind.conf.d"):
        try:
            paths += sorted(os.path.join(base, n) for n in os.listdir(base) if n.endswith(".conf"))
        except OSError:
            continue
    texts = []
    for path in paths:
        try:
            with open(path) as f:
                texts.append(f.read(1 << 16))
        except OSError:
            continue
    return texts


def logout_ends_it(user: str, has_manager: bool) -> bool:
    """Whether logging out will end a detached sandbox started now (see the module docstring)."""
    if not booted():
        return False
    texts = _logind_texts()
    kill = (logind_setting("KillUserProcesses", texts) or "no").lower() in ("yes", "true", "1", "on")
    excluded = (logind_setting("KillExcludeUsers", texts) or "root").split()
    if not kill or user in excluded:
        return False
    return not (has_manager and os.path.exists(os.path.join(LINGER, user)))


def warn_if_logout_ends_it(user: str) -> None:
    if logout_ends_it(user, user_bus() is not None):
        log.warn("logging out will end this sandbox: logind's KillUserProcesses=yes applies to you and you do "
                 "not linger; `loginctl enable-linger` keeps your user manager, and the sandbox, running "
                 "(if your site allows it)")


def own_scope(name: str) -> None:
    """Move this process (the supervisor) into a transient scope of the user manager, when
    there is one; otherwise (or if it fails: said with --debug) it stays where it is."""
    bus = user_bus() if booted() else None
    if bus is None:
        return
    from rootless import spawn
    from rootless.userns import which

    busctl = which("busctl", os.environ.get("PATH"))
    if busctl is None:
        return
    unit = f"rbox-{name}-{os.getpid()}.scope"
    argv = [busctl, "--user", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager", "StartTransientUnit", "ssa(sv)a(sa(sv))", unit, "fail",
            "2", "PIDs", "au", "1", str(os.getpid()), "CollectMode", "s", "inactive-or-failed", "0"]
    # busctl --user finds the bus as user_bus() did: DBUS_SESSION_BUS_ADDRESS, else XDG_RUNTIME_DIR/bus.
    code, output = spawn.run(argv, timeout=10.0)
    log.step(f"scope {unit}: " + ("asked" if code == 0 else f"not made ({output})"))

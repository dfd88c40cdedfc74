"""`rbox ps`, `rbox stop`, `rbox logs` (and the command line of `stats` and `exec`).

Runs in: parent (the caller's rbox, on the host).

Every command first removes what killed supervisors left (registry.sweep), so a dead
sandbox is never listed. `stop` asks the supervisor over its socket (supervisor.Instance.stop)
and waits until the supervisor has exited, so that when it returns nothing of the sandbox
is left: processes, helpers, cgroup, state. A supervisor that does not answer in time is
killed (its death signal chain ends the sandbox) and its directory removed here.
"""

from __future__ import annotations

import os
import time

from rootless import kernel, log, options, sync
from rootless.errors import RboxError, SpecError
from rootless.instance import registry

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket

    from rootless.options import Parsed

DEFAULT_GRACE = 10.0
ANSWER_TIMEOUT = 5.0


def run(parsed: Parsed, environ: dict[str, str]) -> int:
    command, values = str(parsed.command), parsed.values
    if command == "exec":
        from rootless.instance import join

        return join.run(parsed.args, values, environ)
    names = _words(command, parsed.args, values)
    if values.get("help"):
        log.out(options.help_text(command))
        return 0
    registry.sweep(environ)
    if command == "ps":
        if names:
            raise SpecError("`rbox ps` takes no names", hint="`rbox ps` lists all of yours; -a also ended ones")
        return ps(bool(values.get("all")), bool(values.get("json")), environ)
    if command == "stop":
        return stop(names, bool(values.get("all")), _grace(values.get("time")), environ)
    if command == "logs":
        if len(names) != 1:
            raise SpecError("`rbox logs` takes one name", hint="usage: rbox logs [-f] NAME")
        return logs(names[0], bool(values.get("follow")), environ)
    from rootless.instance import stats

    return stats.run(names, bool(values.get("json")), bool(values.get("no_stream")), environ)


def _words(command: str, args: list[str], values: dict[str, object]) -> list[str]:
    """The names, with options allowed anywhere among them (`rbox stop web -t 3`)."""
    head, sep, tail = _split_at_dashes(args)
    table = options.options_for(command)
    words: list[str] = []
    rest = head
    while rest:
        rest = options._parse_options(rest, table, values, command)
        if rest:
            words.append(rest[0])
            rest = rest[1:]
    return words + (tail if sep else [])


def _split_at_dashes(args: list[str]) -> tuple[list[str], bool, list[str]]:
    if "--" in args:
        i = args.index("--")
        return args[:i], True, args[i + 1:]
    return args, False, []


def _grace(value: object) -> float:
    if value is None:
        return DEFAULT_GRACE
    try:
        grace = float(str(value))
    except ValueError:
        grace = -1.0
    if not 0 <= grace <= 86400:
        raise SpecError(f"invalid value `{value}` for -t/--time", hint="give the grace time in seconds, 0 to 86400")
    return grace


# -- ps ----------------------------------------------------------------------------------

def describe(entry: registry.Entry, status: str) -> dict[str, object]:
    """One sandbox as `ps --json` shows it."""
    record = entry.record()
    return {"name": entry.name, "state": status, "exit_code": entry.exit_code() if status == "exited" else None,
            "pid": record.get("init"), "supervisor": record.get("supervisor"), "command": record.get("command"),
            "created": record.get("created"), "started": record.get("started"), "detached": record.get("detached"),
            "network": record.get("net"), "ports": record.get("ports") or [], "image": record.get("image"),
            "rootfs": record.get("rootfs"), "limits": record.get("limits"), "cgroup": record.get("cgroup")}


def ps(all_: bool, as_json: bool, environ: dict[str, str]) -> int:
    rows = []
    for entry in registry.entries(environ):
        try:
            status = entry.status()
            if status == "running" or status in ("starting", "stopping") or (all_ and status == "exited"):
                rows.append(describe(entry, status))
        finally:
            entry.close()
    if as_json:
        import json

        log.out(json.dumps(rows, indent=1) + "\n")
        return 0
    table = [("NAME", "STATE", "PID", "STARTED", "NETWORK", "PORTS", "LIMITS", "COMMAND")]
    for row in rows:
        state = f"exited ({row['exit_code']})" if row["state"] == "exited" else str(row["state"])
        table.append((str(row["name"]), state, str(row["pid"] or "-"), _when(row["started"] or row["created"]),
                      str(row["network"]) + (f" image={row['image']}" if row["image"] else ""),
                      ",".join(str(p) for p in row["ports"]) or "-",  # type: ignore[attr-defined]
                      _limits(row["limits"]), _command(row["command"])))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    log.out("".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)) + "  " + line[-1] + "\n"
                    for line in table))
    return 0


def _when(text: object) -> str:
    """`2026-11-29T10:00:01+0100` as `10:00:01` today, else the date and the time."""
    if not isinstance(text, str) or "T" not in text:
        return "-"
    day, _, clock = text.partition("T")
    return clock[:8] if day == time.strftime("%Y-%m-%d") else f"{day} {clock[:5]}"


def _limits(limits: object) -> str:
    if not isinstance(limits, dict) or not limits:
        return "-"
    from rootless.cgroups import format_size

    shown = []
    for key, value in limits.items():
        shown.append(f"{key}={format_size(value) if key.startswith('memory') and isinstance(value, int) else value}")
    return ",".join(shown)


def _command(argv: object) -> str:
    if not isinstance(argv, list):
        return "-"
    text = " ".join(str(a) for a in argv)
    return log.printable(text if len(text) <= 60 else text[:57] + "...")


# -- stop --------------------------------------------------------------------------------

def stop(names: list[str], all_: bool, grace: float, environ: dict[str, str]) -> int:
    if all_ and names:
        raise SpecError("`rbox stop --all` takes no names", hint="give names, or --all for every sandbox")
    if not all_ and not names:
        raise SpecError("`rbox stop` needs a name", hint="usage: rbox stop [-t SECONDS] NAME... | --all")
    targets: list[registry.Entry] = []
    failed = 0
    if all_:
        targets = registry.entries(environ)
    for name in names:
        entry = registry.find(name, environ)
        if entry is None:
            _error(registry.not_found(name))
            failed += 1
        else:
            targets.append(entry)
    # Ask every supervisor first, then wait for all: their grace times run at once.
    waits = []
    for entry in targets:
        try:
            waits.append((entry, _ask_to_stop(entry, grace)))
        except RboxError as e:
            _error(e)
            failed += 1
            entry.close()
    for entry, supervisor in waits:
        try:
            _wait_stopped(entry, supervisor, grace)
            log.out(entry.name + "\n")
        except RboxError as e:
            _error(e)
            failed += 1
        finally:
            entry.close()
    return 125 if failed else 0


def _ask_to_stop(entry: registry.Entry, grace: float) -> int | None:
    """Ask the supervisor to stop its sandbox; a pidfd of it to wait on (None when it has
    exited already, or on kernels without pidfds: then the lock alone tells)."""
    import signal  # here, not at the top: its import (enum) costs `ps` 3 ms

    status = entry.status()
    if status in ("exited", "stale"):
        return None
    supervisor = _supervisor(entry)
    try:
        answer = request(entry, "STOP", grace=f"{grace:g}")
        if answer[0] != "STOPPING":
            raise RboxError(f"the supervisor of `{entry.name}` answered {answer[0]}", hint="try again, or see --debug")
    except RboxError as e:
        # No socket yet (still starting) or no answer: a SIGTERM aborts its setup, or ends
        # a stuck one by the usual way (it forwards it to the command).
        log.step(f"stop {entry.name}: {e.message}; SIGTERM to its supervisor")
        _signal_supervisor(entry, supervisor, signal.SIGTERM)
    return supervisor


def _supervisor(entry: registry.Entry) -> int | None:
    """A pidfd of the supervisor, taken so that it can be signalled and waited on without a
    pid that may have been reused: the record's pid, checked to be the lock's holder (a
    lock still held after the pidfd was opened means that process was alive then)."""
    pid = entry.record().get("supervisor")
    if not isinstance(pid, int):
        return None
    try:
        fd = kernel.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if fd is not None and not entry.alive():
        os.close(fd)
        return None
    return fd


def _signal_supervisor(entry: registry.Entry, pidfd: int | None, signo: int) -> None:
    import signal

    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signo)
        elif entry.alive():
            pid = entry.record().get("supervisor")
            if isinstance(pid, int):
                os.kill(pid, signo)
    except ProcessLookupError:
        pass


def _wait_stopped(entry: registry.Entry, pidfd: int | None, grace: float) -> None:
    """Until the supervisor has exited (its pidfd readable; before Linux 5.3, its lock free)
    and the directory is gone. Past the grace time and a margin, SIGKILL it."""
    import signal

    from rootless.spawn import readable  # not on `ps`'s path: it brings ctypes and prctl

    deadline = time.monotonic() + grace + ANSWER_TIMEOUT
    killed = False
    try:
        while True:
            done = not entry.alive() and (pidfd is None or readable([pidfd], 0))
            if done:
                break
            if time.monotonic() > deadline:
                if killed:
                    raise RboxError(f"`{entry.name}` did not stop", hint="its processes may be stuck in the kernel "
                                    "(D state): see `ps -u $USER -o pid,stat,cmd`")
                log.step(f"stop {entry.name}: no end in time: SIGKILL to its supervisor")
                _signal_supervisor(entry, pidfd, signal.SIGKILL)
                killed, deadline = True, time.monotonic() + ANSWER_TIMEOUT
            if pidfd is not None:
                readable([pidfd], 0.02)
            else:
                time.sleep(0.02)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    if entry.has(registry.LOCK) or entry.has(registry.RECORD):
        entry.remove()           # ended by itself before (exit kept), or killed


def request(entry: registry.Entry, kind: str, **fields: str) -> tuple[str, dict[str, str], list[int]]:
    """One request to the supervisor's socket: (answer, its fields, descriptors passed).
    Never waits longer than ANSWER_TIMEOUT; RboxError when nobody answers. Through
    `_socket`: socket.py's enum set-up costs milliseconds that `rbox exec` saves."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(ANSWER_TIMEOUT)
        try:
            sock.connect(f"/proc/self/fd/{entry.fd}/{registry.SOCK}")
            try:
                sock.sendall(sync.encode(kind, dict(fields)))
            except BrokenPipeError:
                pass            # refused before it read the request: the refusal is waiting
            return _answer(sock)
        except (OSError, ValueError) as e:
            if isinstance(e, TimeoutError):
                raise RboxError(f"the sandbox `{entry.name}` does not answer",
                                hint=f"its rbox may be stopped (Ctrl-Z) or overloaded; `rbox stop {entry.name}` "
                                     "ends it") from None
            raise RboxError(f"cannot reach the sandbox `{entry.name}`: {getattr(e, 'strerror', None) or e}",
                            hint="it may be starting or ending: look at `rbox ps`") from None
    finally:
        sock.close()


def _answer(sock: _socket.socket) -> tuple[str, dict[str, str], list[int]]:
    """The answer line and the descriptors that came with it (close-on-exec from their
    arrival: MSG_CMSG_CLOEXEC, so that nothing started later can inherit one)."""
    import _socket
    import array

    fds = array.array("i")
    data, ancdata, _, _ = sock.recvmsg(4096, _socket.CMSG_LEN(16 * fds.itemsize), _socket.MSG_CMSG_CLOEXEC)
    for level, ctype, cdata in ancdata:
        if level == _socket.SOL_SOCKET and ctype == _socket.SCM_RIGHTS:
            fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
    while data and not data.endswith(b"\n") and len(data) < 4096:
        more = sock.recv(4096)
        if not more:
            break
        data += more
    if not data.endswith(b"\n"):
        for fd in fds:
            os.close(fd)
        raise OSError("no answer")
    kind, fields = sync.decode(data.rstrip(b"\n"))
    return kind, fields, list(fds)


def _error(e: RboxError) -> None:
    log.write_raw(f"rbox: error: {log.printable(e.message)}\n" + (f"hint: {log.printable(e.hint)}\n" if e.hint else ""))


# -- logs --------------------------------------------------------------------------------

def logs(name: str, follow: bool, environ: dict[str, str]) -> int:
    from rootless.instance import logfile

    entry = registry.find(name, environ)
    if entry is None or entry.status() == "stale":
        raise registry.not_found(name)
    try:
        if not entry.record().get("detached"):
            raise RboxError(f"`{name}` runs in the foreground: its output goes to the terminal it was started in",
                            hint="only a sandbox started with `rbox run -d` has a log")
        try:
            logfile.show(entry.fd, follow, entry.alive)
        except BrokenPipeError:
            pass
    finally:
        entry.close()
    return 0

"""`rbox`: parse the command line, run, and turn every failure into one message.

Runs in: parent. This is the only place that prints errors and picks rbox's own exit
codes (see errors.py and rbox(1), EXIT STATUS).
"""

from __future__ import annotations

import os
import sys

from rootless import __version__, log, options
from rootless.errors import BUG_HINT, EXIT_SETUP, RboxError, resource_error


def entry() -> None:
    """The `rbox` script (bin/rbox, rootless/__main__.py): main(), then exit without
    interpreter finalization.

    rbox registers no atexit work, so tearing down every module object only costs time
    (about 3 ms of a 30 ms run). rbox writes with os.write (log.py), so nothing is
    buffered; a closed stdout or stderr (Python then has None there) changes nothing.
    """
    from rootless import fds

    fds.reserve_stdio()     # before anything opens a file that could land on 0, 1 or 2
    code = main()
    if log.debugging():
        log.step(f"exit {code}, peak RSS {_peak_rss()}")
    os._exit(code)


def _peak_rss() -> str:
    """This process's own high-water mark (VmHWM, proc(5)); not getrusage's ru_maxrss,
    which also counts the mm of the process that forked rbox before its exec."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return line.split(b":")[1].decode().strip()
    except OSError:
        pass
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    log.enable_debug(os.environ.get("RBOX_DEBUG") == "1")
    try:
        return _main(argv)
    except RboxError as e:
        _print_error(e.message, e.hint)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        # A resource ran out (processes, descriptors, space) somewhere in the parent: the
        # limit is named with how to raise it. Any other OSError is a bug (below).
        error = resource_error(e)
        if error is None:
            return _internal_error(e)
        _print_error(error.message, error.hint)
        return error.exit_code
    except Exception as e:  # noqa: BLE001 - the last line of defence: no traceback by default
        return _internal_error(e)


def _internal_error(e: BaseException) -> int:
    if log.debugging():
        import traceback

        log.write_raw(traceback.format_exc())
    _print_error(f"internal error: {type(e).__name__}: {e}", BUG_HINT)
    return EXIT_SETUP


def _main(argv: list[str]) -> int:
    parsed = options.parse(argv)
    if parsed.values.get("debug"):
        log.enable_debug()
    log.step(f"rbox {__version__}, started at {log.started():.6f} s on the monotonic clock")
    if parsed.values.get("version"):
        log.out(f"rbox {__version__}\n")
        return 0
    if parsed.values.get("help"):
        log.out(options.help_text(parsed.command))
        return 0
    from rootless import fds

    if parsed.command == "check":
        from rootless import hostcheck

        fds.seal([])        # the helpers it runs get none of the caller's descriptors
        return hostcheck.run(bool(parsed.values.get("json")))
    if parsed.command == "unshare":
        from rootless import unshare

        return unshare.run(parsed.args)
    if parsed.command == "image":
        from rootless.image import command

        fds.seal([])
        return command.run(parsed.args, parsed.values, caller_environment())
    if parsed.command in options.INSTANCE_COMMANDS:
        from rootless.instance import commands

        # Not sealed here: only exec starts anything (join.run seals); `ps` must stay quick.
        return commands.run(parsed, caller_environment())
    try:
        from rootless import parent, spec  # after --help: they are not needed for it
    except ImportError as e:
        if e.name != "_prctl":
            raise
        raise RboxError(f"python-prctl is not installed for {sys.executable}",
                        hint="pip install python-prctl (it builds against libcap: apt-get install libcap-dev)",
                        ) from None

    try:
        cwd = os.getcwd()
    except OSError as e:
        raise RboxError(f"cannot find the current directory: {e.strerror}",
                        hint="cd to a directory that exists, or pass -w/--workdir") from None
    environ = caller_environment()
    ceilings = {}
    if _has_config(environ):
        from rootless import config

        cfg = config.load(environ, _str(parsed.values.get("profile")))
        parsed = options.parse(argv, cfg.words)
        ceilings = cfg.ceilings
    elif parsed.values.get("profile") is not None:
        raise RboxError(f"no profile `{parsed.values['profile']}`: there is no configuration file",
                        hint="profiles live in /etc/rbox/rbox.toml or ~/.config/rbox/rbox.toml; see rbox(1), FILES")
    # A pty only when the terminal is really there: stdin, stdout and stderr all
    # terminals (rbox(1), TERMINALS). Otherwise the streams pass through untouched.
    the_spec = spec.from_parsed(parsed, environ, cwd, all(os.isatty(fd) for fd in (0, 1, 2)), argv)
    if ceilings:
        from rootless import config

        the_spec.limits = config.apply_ceilings(the_spec.limits, ceilings)  # type: ignore[assignment]
    fds.seal(the_spec.pass_fds)
    if parsed.values.get("join") is not None or parsed.values.get("join_count") is not None:
        from rootless.instance import group

        return group.run(the_spec, parsed.values, argv, parsed.args, environ)
    if the_spec.name is not None:
        from rootless.instance import supervisor

        return supervisor.run(the_spec, _str(parsed.values.get("image")))
    return parent.run(the_spec)


def caller_environment() -> dict[str, str]:
    """The environment rbox was started with, as the kernel keeps it (/proc/self/environ,
    proc(5)), not os.environ: the interpreter adds to that at start (PEP 538 sets
    LC_CTYPE=C.UTF-8 when the locale is C or unset), and the command must get nothing
    that rbox(1), ENVIRONMENT does not list. Bytes that are not UTF-8 survive (fsdecode)."""
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return dict(os.environ)
    env = {}
    for entry in raw.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and key:
            env[os.fsdecode(key)] = os.fsdecode(value)
    return env


def _has_config(environ: dict[str, str]) -> bool:
    """Two stat calls: without configuration files, rbox pays nothing for them."""
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME", "/"), ".config")
    return os.path.exists("/etc/rbox/rbox.toml") or os.path.exists(os.path.join(base, "rbox", "rbox.toml"))


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _print_error(message: str, hint: str | None) -> None:
    """`rbox: error:` and `hint:`, each one line (log.printable escapes control
    characters and bytes that are not UTF-8); nothing at all when stderr is closed."""
    text = log.printable(message)
    if len(text) > 8000:     # a value someone pasted by mistake must not flood the terminal
        text = text[:8000] + "..."
    log.write_raw(f"rbox: error: {text}\n" + (f"hint: {log.printable(hint)}\n" if hint else ""))

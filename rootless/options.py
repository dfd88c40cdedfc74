"""The command-line options: one table for parsing, `--help`, the man-page test and
shell completion.

Runs in: parent.

Why not argparse: it costs about 8 ms to import (re, gettext), a third of rbox's start-up
budget, and rbox needs usage errors to exit 125 anyway (see rbox(1), EXIT STATUS).
mkosi's sandbox hand-parses its argv for the same reason. The table below is the single
definition of every option; tests/unit/test_manpage.py checks man/rbox.1 against it.
"""

from __future__ import annotations

from rootless.errors import SpecError


class Opt:
    __slots__ = ("names", "metavar", "dest", "kind", "choices", "help")

    def __init__(self, names: tuple[str, ...], dest: str, help: str, metavar: str | None = None,
                 kind: str = "flag", choices: tuple[str, ...] = ()):
        self.names, self.dest, self.help = names, dest, help
        self.metavar, self.kind, self.choices = metavar, kind, choices

    @property
    def takes_value(self) -> bool:
        return self.kind not in ("flag", "optional")


# kind: flag (True when given), value (last one wins), append (every one, in order, kept
# together with other "mount" options so that their relative order is preserved).
SANDBOX_OPTIONS = (
    Opt(("--root", "--fakeroot"), "root",
        "be uid and gid 0 inside, with your subordinate ids mapped from 1 up"),
    Opt(("--net",), "net", "network: `slirp4netns` (the default), `pasta`, `none` (loopback only) or `host`",
        metavar="MODE", kind="value", choices=("slirp4netns", "pasta", "none", "host")),
    Opt(("-p", "--publish"), "publish", "publish SANDBOX_PORT on the host (HOST_IP defaults to 127.0.0.1)",
        metavar="[HOST_IP:]HOST_PORT:SANDBOX_PORT[/tcp|/udp]", kind="append"),
    Opt(("--allow-host-loopback",), "allow_host_loopback",
        "let the sandbox reach the host's 127.0.0.1 at 10.0.2.2 (off by default)"),
    Opt(("--bind",), "mounts", "bind host path SRC read-write at DST (default: the same path)",
        metavar="SRC[:DST]", kind="append"),
    Opt(("--ro-bind",), "mounts", "bind host path SRC read-only at DST (default: the same path)",
        metavar="SRC[:DST]", kind="append"),
    Opt(("--bind-try",), "mounts", "like --bind, skipped when SRC does not exist (for site defaults)",
        metavar="SRC[:DST]", kind="append"),
    Opt(("--ro-bind-try",), "mounts", "like --ro-bind, skipped when SRC does not exist",
        metavar="SRC[:DST]", kind="append"),
    Opt(("--tmpfs",), "mounts", "mount an empty, writable tmpfs at DST", metavar="DST", kind="append"),
    Opt(("--hide",), "mounts", "make PATH appear empty (a directory) or as /dev/null (a file)",
        metavar="PATH", kind="append"),
    Opt(("--overlay",), "mounts", "show host directory SRC writable at its place, SRC itself unchanged (writes "
        "discarded at exit, or kept in UPPER)", metavar="SRC[:UPPER]", kind="append"),
    Opt(("--rootfs",), "rootfs", "show directory DIR as `/` instead of the host's (writable, writes discarded at "
        "exit)", metavar="DIR", kind="value"),
    Opt(("--image",), "image", "show image NAME (or a SquashFS FILE) as `/`, with its Env, WorkingDir and command "
        "(writable, writes discarded at exit; rbox image)", metavar="NAME|FILE", kind="value"),
    Opt(("--read-only",), "read_only", "with an image, nothing in its tree is writable"),
    Opt(("--persist",), "persist", "with an image, keep the writes in DIR (made if missing) for the next run",
        metavar="DIR", kind="value"),
    Opt(("--home",), "home", "your home directory: `ro` (default), `rw` or `tmpfs` (empty)",
        metavar="MODE", kind="value", choices=("ro", "rw", "tmpfs")),
    Opt(("--cwd-writable",), "cwd_writable",
        "bind the current directory read-write even when it is your home, /tmp or the like"),
    Opt(("-w", "--workdir"), "workdir", "working directory inside (default: the current one; not made writable)",
        metavar="DIR", kind="value"),
    Opt(("--hostname",), "hostname", "host name inside (default: rbox)", metavar="NAME", kind="value"),
    Opt(("-e", "--env"), "env", "set K to V inside; `-e K` copies K from rbox's environment",
        metavar="K=V", kind="append"),
    Opt(("--unsetenv",), "unsetenv", "remove K from the environment", metavar="K", kind="append"),
    Opt(("--clearenv",), "clearenv", "start from an empty environment (then apply -e)"),
    Opt(("--memory",), "memory", "hard memory limit (memory.max): the kernel kills the command above it",
        metavar="SIZE", kind="value"),
    Opt(("--memory-high",), "memory_high", "memory throttling threshold (memory.high)", metavar="SIZE", kind="value"),
    Opt(("--memory-swap",), "memory_swap", "swap limit (memory.swap.max); 0 for none", metavar="SIZE", kind="value"),
    Opt(("--cpus",), "cpus", "CPU time limit in CPUs, fractions allowed (cpu.max)", metavar="N", kind="value"),
    Opt(("--cpu-weight",), "cpu_weight", "CPU share against your other work, 1-10000 (cpu.weight)",
        metavar="N", kind="value"),
    Opt(("--pids-limit",), "pids_limit", "most processes and threads at once (pids.max)", metavar="N", kind="value"),
    Opt(("--io-weight",), "io_weight", "I/O share, 1-10000 (io.weight)", metavar="N", kind="value"),
    Opt(("--pass-fd",), "pass_fd", "pass your open file descriptor N to the command, as N (repeatable; "
        "0-2 always are, no other is)", metavar="N", kind="append"),
    Opt(("-t", "--tty"), "tty", "give the command a new pseudo-terminal (the default when stdin is one)"),
    Opt(("-T", "--no-tty"), "no_tty", "no pseudo-terminal: the command gets rbox's stdin/stdout/stderr as they are"),
    Opt(("--profile",), "profile", "apply [profiles.NAME] of the configuration files (rbox(1), FILES)",
        metavar="NAME", kind="value"),
    Opt(("--dry-run",), "dry_run", "print the id maps and the mount plan, run nothing"),
    Opt(("--debug",), "debug", "print every setup step; tracebacks for rbox's own errors"),
    Opt(("-h", "--help"), "help", "show this help and exit"),
)

CHECK_OPTIONS = (
    Opt(("--json",), "json", "print the findings as JSON"),
    Opt(("--debug",), "debug", "print every setup step; tracebacks for rbox's own errors"),
    Opt(("-h", "--help"), "help", "show this help and exit"),
)

# `rbox sh` also takes the shell's own -l and -c (like `sh -l`, `sh -c CMD [NAME [ARG...]]`).
SH_OPTIONS = (
    Opt(("-l", "--login"), "login", "start the shell as a login shell (it reads its profile files)"),
    Opt(("-c",), "shell_command", "run CMD with the shell's -c; further words become $0, $1, ...",
        metavar="CMD", kind="value"),
) + SANDBOX_OPTIONS

UNSHARE_OPTIONS = (
    Opt(("--debug",), "debug", "print every setup step; tracebacks for rbox's own errors"),
    Opt(("-h", "--help"), "help", "show this help and exit"),
)

# `rbox run` only: naming a sandbox makes it joinable (rootless/instance, rbox(1), NAMED SANDBOXES).
RUN_OPTIONS = (
    Opt(("-d", "--detach"), "detach", "run in the background: print the name once the command runs; its output "
        "goes to `rbox logs`"),
    Opt(("--name",), "name", "name the sandbox, so that `rbox exec`, `ps`, `stop`, `stats` and `logs` find it",
        metavar="NAME", kind="value"),
    Opt(("--join",), "join", "`--join[=TAG]`: the ranks of one Slurm step or mpirun launch on this node share one "
        "sandbox (TAG: $SLURM_JOB_ID.$SLURM_STEP_ID)", kind="optional"),
    Opt(("--join-count",), "join_count", "with --join: the number of ranks on this node (outside Slurm and "
        "Open MPI's mpirun); implies --join", metavar="N", kind="value"),
) + SANDBOX_OPTIONS

_HELP = Opt(("-h", "--help"), "help", "show this help and exit")
_DEBUG = Opt(("--debug",), "debug", "print every setup step; tracebacks for rbox's own errors")
PS_OPTIONS = (
    Opt(("-a", "--all"), "all", "`ps`: also sandboxes whose command has exited; `stop`: every sandbox"),
    Opt(("--json",), "json", "`ls`, `inspect`, `ps`, `stats`: print JSON"),
    _DEBUG, _HELP,
)
EXEC_OPTIONS = (
    Opt(("-t", "--tty"), "tty", "give the command a new pseudo-terminal (the default when stdin is one)"),
    Opt(("-T", "--no-tty"), "no_tty", "no pseudo-terminal: the command gets rbox's stdin/stdout/stderr as they are"),
    Opt(("-e", "--env"), "env", "set K to V for the command; `-e K` copies K from rbox's environment",
        metavar="K=V", kind="append"),
    Opt(("-w", "--workdir"), "workdir", "working directory inside (default: the sandbox's command's)",
        metavar="DIR", kind="value"),
    _DEBUG, _HELP,
)
STOP_OPTIONS = (
    PS_OPTIONS[0],
    Opt(("-t", "--time"), "time", "seconds between SIGTERM and SIGKILL (default: 10)", metavar="SECONDS",
        kind="value"),
    _DEBUG, _HELP,
)
STATS_OPTIONS = (
    Opt(("--no-stream",), "no_stream", "print the figures once instead of every second"),
    PS_OPTIONS[1],
    _DEBUG, _HELP,
)
LOGS_OPTIONS = (
    Opt(("-f", "--follow"), "follow", "keep printing what the command writes until the sandbox ends"),
    _DEBUG, _HELP,
)

IMAGE_OPTIONS = (
    PS_OPTIONS[1],
    Opt(("--force",), "force", "`export`: replace FILE if it exists"),
    Opt(("-q", "--quiet"), "quiet", "`pull`, `import`: no progress line on the terminal"),
    Opt(("--creds",), "creds", "`pull`: log in to the registry as USER (password from $RBOX_REGISTRY_PASSWORD "
        "or the terminal)", metavar="USER[:PASS]", kind="value"),
    Opt(("--insecure",), "insecure", "`pull`: allow plain http to a registry that is not on this machine"),
    _DEBUG, _HELP,
)

GLOBAL_OPTIONS = (
    Opt(("-h", "--help"), "help", "show this help and exit"),
    Opt(("--version",), "version", "print rbox's version and exit"),
    Opt(("--debug",), "debug", "print every setup step; tracebacks for rbox's own errors"),
)

COMMANDS = {
    "run": ("[OPTIONS] [--] COMMAND [ARG...]", "Run COMMAND in a new sandbox and exit with its exit code "
            "(with -d: in the background)."),
    "sh": ("[OPTIONS]", "Run your login shell (from the password database) in a new sandbox."),
    "check": ("[--json]", "Check what this host offers rbox: one finding per requirement, with the fix."),
    "unshare": ("[--] COMMAND [ARG...]", "Run COMMAND as uid 0 of a user namespace with your id map (to delete what "
                "--root made)."),
    "image": ("import SOURCE NAME | pull REF [NAME] | ls | inspect NAME | rm NAME | export NAME FILE", "Import, "
              "pull, list, describe, remove and export images (rbox(1), IMAGES)."),
    "ps": ("[-a] [--json]", "List your named sandboxes that are running (-a: also those that have exited)."),
    "exec": ("[OPTIONS] NAME [--] COMMAND [ARG...]", "Run COMMAND inside the running sandbox NAME, as contained as "
             "its own command."),
    "stop": ("[-t SECONDS] NAME... | --all", "Stop sandboxes: SIGTERM to the command, SIGKILL to all after the "
             "grace time."),
    "stats": ("[--no-stream] [--json] [NAME...]", "Show the CPU, memory, processes and network use of running "
              "sandboxes."),
    "logs": ("[-f] NAME", "Print the output of the detached sandbox NAME."),
}
# The commands on named sandboxes (rootless/instance): dispatched before anything of `run` is imported.
INSTANCE_COMMANDS = ("ps", "exec", "stop", "stats", "logs")


class Parsed:
    __slots__ = ("command", "values", "args")

    def __init__(self, command: str | None, values: dict[str, object], args: list[str]):
        self.command, self.values, self.args = command, values, args


def options_for(command: str | None) -> tuple[Opt, ...]:
    if command is None:
        return GLOBAL_OPTIONS
    return {"check": CHECK_OPTIONS, "sh": SH_OPTIONS, "unshare": UNSHARE_OPTIONS, "image": IMAGE_OPTIONS,
            "run": RUN_OPTIONS, "ps": PS_OPTIONS, "exec": EXEC_OPTIONS, "stop": STOP_OPTIONS,
            "stats": STATS_OPTIONS, "logs": LOGS_OPTIONS}.get(command, SANDBOX_OPTIONS)


def parse(argv: list[str], defaults: list[str] | None = None) -> Parsed:
    """`rbox [GLOBAL] COMMAND [OPTIONS] [--] [ARGS]` -> Parsed. Raises SpecError.

    `defaults` are option words from the configuration files, parsed before the command
    line's, so that the command line wins (config.py)."""
    values: dict[str, object] = {}
    rest = _parse_options(argv, GLOBAL_OPTIONS, values, None)
    if values.get("help") or values.get("version"):
        return Parsed(None, values, [])
    if not rest:
        raise SpecError("no command given", hint="try `rbox run -- COMMAND`, `rbox sh` or `rbox --help`")
    command, rest = rest[0], rest[1:]
    if command not in COMMANDS:
        raise SpecError(f"unknown command `{command}`", hint="the commands are: " + ", ".join(COMMANDS))
    if defaults:
        _parse_options(defaults, options_for(command), values, command)
    args = _parse_options(rest, options_for(command), values, command)
    if command == "check" and args:
        raise SpecError("`rbox check` takes no arguments", hint="see `rbox check --help`")
    return Parsed(command, values, args)


def _parse_options(argv: list[str], table: tuple[Opt, ...], values: dict[str, object],
                   command: str | None) -> list[str]:
    """Consume options from the front of argv; return what follows them.

    Options end at `--`, at the first word that is not an option (so `rbox run ls -l`
    passes `-l` to ls), or at the command name for the global options.
    """
    by_name = {name: opt for opt in table for name in opt.names}
    where = f"rbox {command}" if command else "rbox"
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return argv[i + 1:]
        if not word.startswith("-") or word == "-":
            return argv[i:]
        name, value = _split(word, by_name)
        opt = by_name.get(name)
        if opt is None:
            raise SpecError(f"unknown option `{name}` for `{where}`", hint=f"see `{where} --help`")
        if opt.takes_value and value is None:
            i += 1
            if i >= len(argv):
                raise SpecError(f"option `{name}` needs a value ({opt.metavar})",
                                hint=f"write `{name} {opt.metavar}`; see `{where} --help`")
            value = argv[i]
        elif not opt.takes_value and value is not None and opt.kind != "optional":
            raise SpecError(f"option `{name}` takes no value",
                            hint=f"write `{name}` alone, without `={value}`")
        _store(opt, name, value, values)
        i += 1
    return []


def _split(word: str, by_name: dict[str, Opt]) -> tuple[str, str | None]:
    if word.startswith("--"):
        name, sep, value = word.partition("=")
        return name, (value if sep else None)
    # Short options: `-w DIR`, `-wDIR`, `-e K=V`, `-eK=V`.
    name = word[:2]
    if len(word) > 2 and name in by_name and by_name[name].takes_value:
        return name, word[2:]
    return word, None


def _store(opt: Opt, name: str, value: str | None, values: dict[str, object]) -> None:
    if opt.choices and value not in opt.choices:
        raise SpecError(f"invalid value `{value}` for `{name}`", hint="choose one of: " + ", ".join(opt.choices))
    if opt.kind == "flag":
        values[opt.dest] = True
    elif opt.kind == "optional":         # `--join` or `--join=TAG`
        values[opt.dest] = value if value is not None else True
    elif opt.kind == "value":
        values[opt.dest] = value
    else:
        entries = values.setdefault(opt.dest, [])
        assert isinstance(entries, list)
        entries.append((opt.names[-1], value))


def help_text(command: str | None) -> str:
    if command is None:
        lines = ["usage: rbox [--debug] COMMAND [OPTIONS] ...", "",
                 "A rootless sandbox: user, PID, mount, UTS, IPC, cgroup and network namespaces.", "",
                 "commands:"]
        lines += [f"  {name:<9}{text}" for name, (_, text) in COMMANDS.items()]
        lines += ["", "options:"]
    else:
        usage, text = COMMANDS[command]
        lines = [f"usage: rbox {command} {usage}", "", text, "", "options:"]
    for opt in options_for(command):
        head = ", ".join(opt.names) + (f" {opt.metavar}" if opt.metavar else "")
        lines.append(f"  {head:<24} {opt.help}" if len(head) < 24 else f"  {head}\n  {'':<24} {opt.help}")
    lines += ["", "Exit status: the command's own; 125 rbox failed, 126 cannot execute, 127 not found,",
              "128+N killed by signal N. See rbox(1)."]
    return "\n".join(lines) + "\n"

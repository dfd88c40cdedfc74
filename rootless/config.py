"""Site and user configuration (TOML), turned into option words.

Runs in: parent. Read only when a file exists (tomllib is imported then, not before).

    /etc/rbox/rbox.toml                       the site file (administrator)
    $XDG_CONFIG_HOME/rbox/rbox.toml           the user file (~/.config/rbox/rbox.toml)

    [defaults]              # any sandbox option, by its long name without the dashes
    net = "slirp4netns"
    memory = "4G"
    bind = ["/data", "/scratch"]

    [profiles.gpu]          # chosen with --profile gpu; the same keys
    bind = ["/dev/nvidia0"]

    [ceilings]              # site file only: maxima a user cannot raise
    memory = "8G"           # also applied when no --memory is given
    pids-limit = 1024
    cpus = 4

Precedence: site defaults, user defaults, the profile (site, then user), the command
line. Each entry becomes the option words it stands for (`memory = "4G"` is
`--memory 4G`), parsed before the command line's: the same validation applies, a later
word wins for single values and list options accumulate. Every mistake names the file,
the line and the key.
"""

from __future__ import annotations

import bisect
import os
import stat

from rootless.errors import SpecError
from rootless.options import SANDBOX_OPTIONS

SITE = "/etc/rbox/rbox.toml"
CEILING_KEYS = ("memory", "memory-high", "memory-swap", "cpus", "pids-limit")
# Long options that are no default: they are about one run (why, in the refusal).
PER_RUN = {"help": "it prints the help", "dry-run": "it runs nothing", "profile": "profiles are chosen per run",
           "pass-fd": "descriptors exist only in the shell that starts one run",
           "tty": "whether a run gets a pseudo-terminal follows its terminal; -t forces one for a run",
           "no-tty": "whether a run gets a pseudo-terminal follows its terminal; -T forbids one for a run"}
# Settings that name paths: `~`, `~/...` and $HOME expand, and they must then be absolute.
PATH_KEYS = ("bind", "ro-bind", "bind-try", "ro-bind-try", "tmpfs", "hide", "workdir", "rootfs")
FORMAT_HINT = "see rbox(1), FILES, for the format"
MAX_SIZE = 1 << 20
Path = tuple[str, ...]          # a key's full name: ("profiles", "gpu", "net")


def user_file(environ: dict[str, str]) -> str:
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME", "/"), ".config")
    return os.path.join(base, "rbox", "rbox.toml")


class Config:
    __slots__ = ("words", "ceilings")

    def __init__(self) -> None:
        self.words: list[str] = []                               # option words, in precedence order
        self.ceilings: dict[str, tuple[str, str, int]] = {}      # key -> (value, file, line)


class File:
    """One parsed configuration file, with the line of every key in it."""

    __slots__ = ("path", "data", "lines")

    def __init__(self, path: str, data: dict[str, object], lines: dict[Path, int]):
        self.path, self.data, self.lines = path, data, lines

    def where(self, *key: str) -> str:
        """`FILE, line N` for a key (or the nearest enclosing table found)."""
        for end in range(len(key), 0, -1):
            if key[:end] in self.lines:
                return f"{self.path}, line {self.lines[key[:end]]}"
        return self.path


def load(environ: dict[str, str], profile: str | None, site: str = SITE) -> Config:
    config = Config()
    files = [_parse(path) for path in (site, user_file(environ)) if os.path.exists(path)]
    for f in files:
        # Everything is checked before anything is used: a malformed site file must
        # never weaken a ceiling (a `ceilings = "8G"` that is not a table is refused).
        _check_tables(f, site_file=(f.path == site))
    for f in files:
        config.words += _words(f, ("defaults",), _table(f.data, "defaults"))
    if profile is not None:
        found = False
        for f in files:
            table = _table(f.data, "profiles").get(profile)
            if isinstance(table, dict):
                found = True
                config.words += _words(f, ("profiles", profile), table)
        if not found:
            known = sorted({name for f in files for name in _table(f.data, "profiles")})
            raise SpecError(f"no profile `{profile}` in {' or '.join(f.path for f in files) or 'any config file'}",
                            hint="profiles here: " + (", ".join(known) if known else "none"))
    for f in files:
        for key, value in _table(f.data, "ceilings").items():
            text = str(value)
            line = f.lines.get(("ceilings", key), 0)
            ceiling_value(key, text, f.path, line)       # a bad ceiling stops rbox, with where it is
            config.ceilings[key] = (text, f.path, line)
    return config


def _table(data: dict[str, object], key: str) -> dict[str, object]:
    value = data.get(key, {})
    return value if isinstance(value, dict) else {}


def _parse(path: str) -> File:
    import tomllib

    try:
        # O_NONBLOCK: a FIFO put there must not hang rbox; only a regular file of a
        # sane size is read (a link to /dev/zero would never end).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SIZE:
                what = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"larger than {MAX_SIZE >> 10} KiB"
                raise SpecError(f"`{path}` is {what}", hint="a configuration file is a short TOML text; "
                                                            "see rbox(1), FILES")
            raw = f.read(MAX_SIZE + 1)
        text = raw.decode()
        return File(path, tomllib.loads(text), key_lines(text))
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise SpecError(f"{path}, line {line}: not UTF-8 text", hint="TOML files are UTF-8; " + FORMAT_HINT) from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: {e}", hint=FORMAT_HINT) from None
    except ValueError:
        # int() refuses integers of more than 4300 digits (CVE-2020-10735); tomllib says
        # so without a position.
        line = _long_number_line(text)
        raise SpecError(f"{path}{f', line {line}' if line else ''}: a number of more than 4300 digits",
                        hint="no setting takes a number that long; " + FORMAT_HINT) from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively (about 500 deep).
        raise SpecError(f"{path}, line {deepest_line(text)}: arrays or tables nested too deeply",
                        hint="settings take plain values or lists of them; " + FORMAT_HINT) from None
    except OSError as e:
        raise SpecError(f"cannot read `{path}`: {e.strerror}",
                        hint="make it readable, or move it away to run without it") from None


def _long_number_line(text: str) -> int:
    for number, line in enumerate(text.splitlines(), 1):
        run = 0
        for char in line:
            run = run + 1 if char.isdigit() or (char == "_" and run) else 0
            if run > 4300:
                return number
    return 0


def _check_tables(f: File, site_file: bool) -> None:
    allowed = ("defaults", "profiles", "ceilings") if site_file else ("defaults", "profiles")
    for key, value in f.data.items():
        if key not in allowed:
            why = " (only the site file may set ceilings)" if key == "ceilings" else ""
            raise SpecError(f"{f.where(key)}: unknown table or key `{key}`{why}",
                            hint="the tables are [defaults], [profiles.NAME] and, in the site file, [ceilings]")
        if not isinstance(value, dict):
            raise SpecError(f"{f.where(key)}: `{key}` must be a table, not {_kind(value)}",
                            hint=f"write [{key}] on a line of its own, then its settings below it; " + FORMAT_HINT)
    for name, value in _table(f.data, "profiles").items():
        if not isinstance(value, dict):
            raise SpecError(f"{f.where('profiles', name)}: profile `{name}` must be a table, not {_kind(value)}",
                            hint=f"write [profiles.{name}] on a line of its own, then its settings below it")
    for key, value in _table(f.data, "ceilings").items():
        if key not in CEILING_KEYS:
            raise SpecError(f"{f.where('ceilings', key)}: `{key}` cannot be a ceiling",
                            hint="ceilings: " + ", ".join(CEILING_KEYS))
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise SpecError(f"{f.where('ceilings', key)}: the ceiling `{key}` must be one value, not {_kind(value)}",
                            hint='for example memory = "8G", cpus = 4, pids-limit = 1024')


def _kind(value: object) -> str:
    kinds = {bool: "a boolean", str: "a string", int: "a number", float: "a number", list: "a list",
             dict: "a table"}
    return kinds.get(type(value), "a date or time")


def _words(f: File, table: Path, entries: dict[str, object]) -> list[str]:
    """The option words for one table, each entry checked as the option it stands for."""
    from rootless import options

    # Every long name of an option is a setting (`root` and `fakeroot` alike).
    by_name = {name.removeprefix("--"): opt for opt in SANDBOX_OPTIONS for name in opt.names if name.startswith("--")}
    words: list[str] = []
    for key, value in entries.items():
        where = f"{f.where(*table, key)}, key `{key}`"
        opt = by_name.get(key)
        if key in PER_RUN:
            raise SpecError(f"{where}: `{key}` is not a setting: {PER_RUN[key]}",
                            hint=f"give --{key} on the command line of the run that needs it")
        if opt is None:
            raise SpecError(f"{where}: unknown setting", hint="settings are the long options of `rbox run`, "
                                                              "without the dashes; see rbox(1), FILES")
        values = value if isinstance(value, list) else [value]
        if opt.kind != "append" and isinstance(value, list):
            raise SpecError(f"{where}: takes one value, not a list", hint=f'write {key} = "VALUE"')
        entry: list[str] = []
        for item in values:
            if isinstance(item, bool):
                if opt.takes_value or not item:
                    raise SpecError(f"{where}: `{_show(item)}` is not a value for --{key}", hint=_value_hint(key, opt))
                entry.append(f"--{key}")
            elif isinstance(item, (str, int, float)) and opt.takes_value:
                if isinstance(item, str) and "\0" in item:
                    # No path, name or environment entry can hold one (C strings end there).
                    raise SpecError(f"{where}: `{_show(item)}` contains a NUL character (\\u0000)",
                                    hint="remove it; no path, name or variable can contain one")
                if key in PATH_KEYS:
                    item = expand_paths(str(item), key, where)
                    entry += [f"--{_try_if_missing(key, item)}", item]
                else:
                    entry += [f"--{key}", str(item)]
            else:
                raise SpecError(f"{where}: `{_show(item)}` is not a value for --{key}", hint=_value_hint(key, opt))
        try:
            # The same parser and checks as on the command line.
            from rootless import spec

            parsed = options.parse(["run", *entry, "true"])
            spec.from_parsed(parsed, dict(os.environ), os.getcwd() if os.path.isdir(".") else "/", False)
        except SpecError as e:
            raise SpecError(f"{where}: {e.message}", hint=e.hint) from None
        words += entry
    return words


def expand_paths(value: str, key: str, where: str) -> str:
    """`~`, `~/...`, `$HOME` and `${HOME}` in each path of a setting (SRC:DST for binds),
    which must then be absolute: a configuration file has no current directory of its
    own, and `hide = ["~/.profile"]` must not become `<cwd>/~/.profile`."""
    home = os.environ.get("HOME") or os.path.expanduser("~")
    parts = value.split(":", 1) if key in ("bind", "ro-bind", "bind-try", "ro-bind-try") else [value]
    expanded = []
    for part in parts:
        part = part.replace("${HOME}", home).replace("$HOME", home)
        if part == "~" or part.startswith("~/"):
            part = home + part[1:]
        if not part.startswith("/"):
            raise SpecError(f"{where}: `{_show(part)}` is not an absolute path",
                            hint="paths in configuration files are absolute, or start with ~/ or $HOME/")
        expanded.append(part)
    return ":".join(expanded)


def _try_if_missing(key: str, value: str) -> str:
    """A bind of the defaults whose source this node lacks is skipped, not an error for
    every run (a site file shared by heterogeneous nodes): it becomes its -try form,
    which --debug reports when it skips."""
    if key in ("bind", "ro-bind") and not os.path.lexists(value.split(":", 1)[0]):
        return f"{key}-try"
    return key


def _show(value: object, limit: int = 60) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _value_hint(key: str, opt: object) -> str:
    takes_value = getattr(opt, "takes_value", True)
    if not takes_value:
        return f"write {key} = true, or leave it out"
    if getattr(opt, "kind", "") == "append":
        return f'write {key} = ["VALUE", ...] with strings'
    return f'write {key} = "VALUE"'


def key_lines(text: str) -> dict[Path, int]:
    """The line (1-based) where each key and table of TOML text is defined (pure).

    tomllib gives no positions, so this scans the text the way TOML is written: table
    headers (`[a."b c"]`, `[[t]]`), keys bare, "quoted" or 'literal' and dotted, values
    skipped (strings of every kind, arrays over several lines), inline tables entered
    (`defaults = { memory = "4G" }` defines `defaults.memory` on its line). Iterative,
    so nesting depth costs no recursion. Meant for text tomllib accepted."""
    found: dict[Path, int] = {}
    breaks = [i for i, c in enumerate(text) if c == "\n"]
    stack: list[tuple[str, Path]] = []      # ("array" | "inline", the key they belong to)
    table: Path = ()
    pos, n = 0, len(text)

    def line_at(i: int) -> int:
        return bisect.bisect_left(breaks, i) + 1

    def record(path: Path, at: int) -> None:
        for end in range(1, len(path) + 1):
            found.setdefault(path[:end], line_at(at))

    while pos < n:
        c = text[pos]
        if c in " \t\r\n":
            pos += 1
        elif c == "#":
            end = text.find("\n", pos)
            pos = n if end < 0 else end
        elif stack and stack[-1][0] == "array":
            if c in "],":
                if c == "]":
                    stack.pop()
                pos += 1
            else:
                pos = _value(text, pos, stack[-1][1], stack)
        elif stack and c in "},":
            if c == "}":
                stack.pop()
            pos += 1
        elif not stack and c == "[":
            start = pos
            pos += 2 if text.startswith("[[", pos) else 1
            keys, pos = _key(text, pos)
            if not keys:
                break
            table = keys
            record(table, start)
            pos = text.find("]", pos)
            pos = n if pos < 0 else pos + (2 if text.startswith("]]", pos) else 1)
        else:
            start = pos
            keys, pos = _key(text, pos)
            pos = _skip_blanks(text, pos)
            if not keys or not text.startswith("=", pos):
                break                                   # not TOML after all: keep what was found
            path = (stack[-1][1] if stack else table) + keys
            record(path, start)
            pos = _value(text, pos + 1, path, stack)
    return found


def _skip_blanks(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _key(text: str, pos: int) -> tuple[Path, int]:
    """A dotted key at pos: (its parts, the position after it); () when there is none."""
    parts: list[str] = []
    while True:
        pos = _skip_blanks(text, pos)
        if text.startswith('"', pos):
            end = pos + 1
            while end < len(text) and text[end] not in '"\n':
                end += 2 if text[end] == "\\" else 1
            parts.append(text[pos + 1:end].replace('\\"', '"').replace("\\\\", "\\"))
            pos = end + 1
        elif text.startswith("'", pos):
            end = text.find("'", pos + 1)
            end = len(text) if end < 0 else end
            parts.append(text[pos + 1:end])
            pos = end + 1
        else:
            end = pos
            while end < len(text) and (text[end].isascii() and (text[end].isalnum() or text[end] in "_-")):
                end += 1
            if end == pos:
                return (), pos
            parts.append(text[pos:end])
            pos = end
        pos = _skip_blanks(text, pos)
        if not text.startswith(".", pos):
            return tuple(parts), pos
        pos += 1


def _value(text: str, pos: int, path: Path, stack: list[tuple[str, Path]]) -> int:
    """Skip one value at pos (entering arrays and inline tables); the position after it."""
    pos = _skip_blanks(text, pos)
    for quotes in ('"""', "'''"):
        if text.startswith(quotes, pos):
            end = pos + 3
            while True:
                end = text.find(quotes, end)
                if end < 0:
                    return len(text)
                if quotes == "'''" or _unescaped(text, end):
                    break
                end += 1
            end += 3
            while text.startswith(quotes[0], end):    # up to two quotes may end the content
                end += 1
            return end
    c = text[pos:pos + 1]
    if c == '"':
        end = pos + 1
        while end < len(text) and text[end] not in '"\n':
            end += 2 if text[end] == "\\" else 1
        return end + 1
    if c == "'":
        end = text.find("'", pos + 1)
        return len(text) if end < 0 else end + 1
    if c == "[":
        stack.append(("array", path))
        return pos + 1
    if c == "{":
        stack.append(("inline", path))
        return pos + 1
    while pos < len(text) and text[pos] not in ",]}\n#":
        pos += 1
    return pos


def _unescaped(text: str, pos: int) -> bool:
    backslashes = 0
    while pos - backslashes - 1 >= 0 and text[pos - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 0


def deepest_line(text: str) -> int:
    """The line where brackets and braces nest deepest (strings and comments aside)."""
    depth, best, best_line, line = 0, -1, 1, 1
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\n":
            line += 1
            if quote in ('"', "'"):
                quote = ""
        elif quote:
            if c == "\\" and quote == '"':
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "#":
            while i + 1 < len(text) and text[i + 1] != "\n":
                i += 1
        elif c in "[{":
            depth += 1
            if depth > best:
                best, best_line = depth, line
        elif c in "]}":
            depth -= 1
        i += 1
    return best_line


def line_of(text: str, table: str, key: str) -> int:
    """The line that sets `key` in `[table]` (`table` dotted, "" for the top level);
    0 when not found."""
    path = tuple(p for p in table.split(".") if p) + (key,)
    return key_lines(text).get(path, 0)


def ceiling_value(key: str, text: str, path: str, line: int) -> int | float:
    """A ceiling's value, parsed like its option; a mistake names the file and line."""
    from rootless import cgroups as cg

    option = f"--{key}"
    try:
        if key == "cpus":
            return cg.parse_number(text, option, 0.01, 4096, integer=False)
        if key == "pids-limit":
            return cg.parse_number(text, option, cg.PIDS_MIN, cg.PIDS_MAX)
        return 0 if text.strip() == "0" and key == "memory-swap" else cg.parse_size(text, option)
    except SpecError as e:
        raise SpecError(f"{path}, line {line}, ceiling `{key}`: {e.message}", hint=e.hint) from None


def apply_ceilings(limits: object, ceilings: dict[str, tuple[str, str, int]]) -> object:
    """Cap the limits at the site's ceilings; a missing limit gets the ceiling itself."""
    from rootless import cgroups as cg

    if not ceilings:
        return limits
    current = limits if isinstance(limits, cg.Limits) else cg.Limits()
    attrs = {"memory": "memory", "memory-high": "memory_high", "memory-swap": "memory_swap", "cpus": "cpus",
             "pids-limit": "pids"}
    for key, (text, path, line) in ceilings.items():
        option = f"--{key}"
        ceiling = ceiling_value(key, text, path, line)
        asked = getattr(current, attrs[key])
        if asked is None:
            setattr(current, attrs[key], ceiling)
        elif asked > ceiling:
            shown = cg.format_size(int(ceiling)) if key.startswith("memory") else f"{ceiling:g}"
            raise SpecError(f"{option} {_show_limit(key, asked)} is above the site's ceiling "
                            f"of {shown} ({path}, line {line})",
                            hint=f"ask for at most {shown}, or ask the administrators to raise it")
    return current


def _show_limit(key: str, value: float) -> str:
    from rootless import cgroups as cg

    return cg.format_size(int(value)) if key.startswith("memory") else f"{value:g}"

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

import os

from rootless.errors import SpecError
from rootless.options import SANDBOX_OPTIONS

SITE = "/etc/rbox/rbox.toml"
CEILING_KEYS = ("memory", "memory-high", "memory-swap", "cpus", "pids-limit")
NOT_CONFIGURABLE = ("help", "dry-run", "profile", "tty", "no-tty")


def user_file(environ: dict[str, str]) -> str:
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME", "/"), ".config")
    return os.path.join(base, "rbox", "rbox.toml")


class Config:
    __slots__ = ("words", "ceilings")

    def __init__(self) -> None:
        self.words: list[str] = []                               # option words, in precedence order
        self.ceilings: dict[str, tuple[str, str, int]] = {}      # key -> (value, file, line)


def load(environ: dict[str, str], profile: str | None, site: str = SITE) -> Config:
    config = Config()
    tables = []
    for path in (site, user_file(environ)):
        if os.path.exists(path):
            tables.append((path, _parse(path)))
    for path, (data, text) in tables:
        _check_tables(path, data, text, site_file=(path == site))
        config.words += _words(path, text, "defaults", data.get("defaults", {}))
    if profile is not None:
        found = False
        for path, (data, text) in tables:
            table = _table(data, "profiles").get(profile)
            if table is not None:
                found = True
                config.words += _words(path, text, f"profiles.{profile}", table)
        if not found:
            known = sorted({name for _, (data, _) in tables for name in _table(data, "profiles")})
            raise SpecError(f"no profile `{profile}` in {' or '.join(p for p, _ in tables) or 'any config file'}",
                            hint="profiles here: " + (", ".join(known) if known else "none"))
    for path, (data, text) in tables:
        for key, value in _table(data, "ceilings").items():
            config.ceilings[key] = (str(value), path, line_of(text, "ceilings", key))
    return config


def _table(data: dict[str, object], key: str) -> dict[str, object]:
    value = data.get(key, {})
    return value if isinstance(value, dict) else {}


def _parse(path: str) -> tuple[dict[str, object], str]:
    import tomllib

    try:
        with open(path, "rb") as f:
            raw = f.read()
        return tomllib.loads(raw.decode()), raw.decode()
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: {e}", hint="see rbox(1), FILES, for the format") from None
    except OSError as e:
        raise SpecError(f"cannot read `{path}`: {e.strerror}") from None


def _check_tables(path: str, data: dict[str, object], text: str, site_file: bool) -> None:
    allowed = ("defaults", "profiles", "ceilings") if site_file else ("defaults", "profiles")
    for key in data:
        if key not in allowed:
            where = " (only the site file may set ceilings)" if key == "ceilings" else ""
            raise SpecError(f"{path}, line {line_of(text, '', key)}: unknown table or key `{key}`{where}",
                            hint="the tables are [defaults], [profiles.NAME] and, in the site file, [ceilings]")
    for key in _table(data, "ceilings"):
        if key not in CEILING_KEYS:
            raise SpecError(f"{path}, line {line_of(text, 'ceilings', key)}: `{key}` cannot be a ceiling",
                            hint="ceilings: " + ", ".join(CEILING_KEYS))


def _words(path: str, text: str, table: str, entries: object) -> list[str]:
    """The option words for one table, each entry checked as the option it stands for."""
    from rootless import options

    if not isinstance(entries, dict):
        raise SpecError(f"{path}: [{table}] must be a table")
    by_name = {opt.names[-1].removeprefix("--"): opt for opt in SANDBOX_OPTIONS}
    words: list[str] = []
    for key, value in entries.items():
        line = line_of(text, table, key)
        where = f"{path}, line {line}, key `{key}`"
        opt = by_name.get(key)
        if opt is None or key in NOT_CONFIGURABLE:
            raise SpecError(f"{where}: unknown setting", hint="settings are the long options of `rbox run`, "
                                                              "without the dashes; see rbox(1), FILES")
        values = value if isinstance(value, list) else [value]
        if opt.kind != "append" and isinstance(value, list):
            raise SpecError(f"{where}: takes one value, not a list")
        entry: list[str] = []
        for item in values:
            if isinstance(item, bool):
                if opt.takes_value or not item:
                    raise SpecError(f"{where}: `{item}` is not a value for --{key}")
                entry.append(f"--{key}")
            elif isinstance(item, (str, int, float)) and opt.takes_value:
                entry += [f"--{key}", str(item)]
            else:
                raise SpecError(f"{where}: `{item}` is not a value for --{key}")
        try:
            # The same parser and checks as on the command line.
            from rootless import spec

            parsed = options.parse(["run", *entry, "true"])
            spec.from_parsed(parsed, dict(os.environ), os.getcwd() if os.path.isdir(".") else "/", False)
        except SpecError as e:
            raise SpecError(f"{where}: {e.message}", hint=e.hint) from None
        words += entry
    return words


def line_of(text: str, table: str, key: str) -> int:
    """The line that sets `key` in `[table]` (1-based; 0 when not found)."""
    current = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped.strip("[]").strip()
            if not table and current.split(".")[0] == key:
                return number
            continue
        name = stripped.split("=", 1)[0].strip().strip('"')
        if current == table and "=" in stripped and name == key:
            return number
    return 0


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
        if key == "cpus":
            ceiling: int | float = cg.parse_number(text, option, 0.01, 4096, integer=False)
        elif key == "pids-limit":
            ceiling = cg.parse_number(text, option, 1, 4194304)
        else:
            ceiling = 0 if text.strip() == "0" and key == "memory-swap" else cg.parse_size(text, option)
        asked = getattr(current, attrs[key])
        if asked is None:
            setattr(current, attrs[key], ceiling)
        elif asked > ceiling:
            shown = cg.format_size(int(ceiling)) if key.startswith("memory") else f"{ceiling:g}"
            raise SpecError(f"{option} {text if asked is None else _show(key, asked)} is above the site's ceiling "
                            f"of {shown} ({path}, line {line})",
                            hint=f"ask for at most {shown}, or ask the administrators to raise it")
    return current


def _show(key: str, value: float) -> str:
    from rootless import cgroups as cg

    return cg.format_size(int(value)) if key.startswith("memory") else f"{value:g}"

"""Configuration mistakes: refused with the file and the line (rbox(1), FILES); a
malformed site file never weakens a ceiling; line numbers right whatever the TOML
spelling (quoted keys, inline tables, dotted keys, top-level keys)."""

from __future__ import annotations

import pytest
import tomllib
from hypothesis import given, settings
from hypothesis import strategies as st

from rootless import config
from rootless.errors import SpecError


def load(tmp_path, site: str | None = None, user: str | None = None, profile: str | None = None) -> config.Config:
    if user is not None:
        (tmp_path / "rbox").mkdir(exist_ok=True)
        (tmp_path / "rbox" / "rbox.toml").write_text(user)
    site_path = tmp_path / "site.toml"
    if site is not None:
        site_path.write_text(site)
    return config.load({"XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path)}, profile, site=str(site_path))


def refused(tmp_path, **files: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        cfg = load(tmp_path, **files)
        config.apply_ceilings(None, cfg.ceilings)
    assert info.value.hint, "every configuration error says what to do"
    return info.value


@pytest.mark.parametrize(("text", "message"), [
    ('ceilings = "8G"\n', "line 1: `ceilings` must be a table, not a string"),
    ('# policy\nceilings = ["8G"]\n', "line 2: `ceilings` must be a table, not a list"),
    ('[ceilings]\npids-limit = "abc"\n', "line 2, ceiling `pids-limit`: invalid value `abc` for --pids-limit"),
    ("[ceilings]\n'memory' = inf\n", "line 2, ceiling `memory`: invalid size `inf` for --memory"),
    ('ceilings = { cpus = 1e400 }\n', "line 1, ceiling `cpus`: invalid value `inf` for --cpus"),
    ('ceilings.memory = "1e400"\n', "line 1, ceiling `memory`: invalid size `1e400` for --memory"),
    ('[ceilings]\nmemory = true\n', "line 2: the ceiling `memory` must be one value, not a boolean"),
    ('[ceilings]\n\nmemory = ["8G"]\n', "line 3: the ceiling `memory` must be one value, not a list"),
    ('[ceilings]\npids-limit = 1\n', "line 2, ceiling `pids-limit`: invalid value `1` for --pids-limit"),
])
def test_a_malformed_ceiling_is_refused_with_file_and_line(tmp_path, text: str, message: str) -> None:
    assert refused(tmp_path, site=text).message == f"{tmp_path}/site.toml, {message}"


def test_a_good_ceiling_still_applies(tmp_path) -> None:
    limits = config.apply_ceilings(None, load(tmp_path, site='ceilings = { memory = "8G", pids-limit = 64 }').ceilings)
    assert (limits.memory, limits.pids) == (8 << 30, 64)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("text", "message"), [
    ("[defaults]\n'memory' = \"lots\"\n", "line 2, key `memory`: invalid size `lots` for --memory"),
    ('defaults = { net = "wifi" }\n', "line 1, key `net`: invalid value `wifi` for `--net`"),
    ('defaults.hostname = "-x"\n', "line 1, key `hostname`: invalid host name `-x`"),
    ('profile = "x"\n', "line 1: unknown table or key `profile`"),
    ('defaults = "none"\n', "line 1: `defaults` must be a table, not a string"),
    ('[profiles]\ngpu = 1\n', "line 2: profile `gpu` must be a table, not a number"),
    ('[defaults]\nunsetenv = ["""\nmemory = 1\n"""]\n"env" = ["A=\\u0000"]\n',
     "line 5, key `env`: `A=\\x00` contains a NUL character (\\u0000)"),
    ('[defaults]\nbind = ' + "[" * 3000 + "]" * 3000 + "\n", "line 2: arrays or tables nested too deeply"),
    ('[defaults]\npids-limit = ' + "9" * 5000 + "\n", "line 2: a number of more than 4300 digits"),
    ('[defaults]\nbind = [\n  "/tmp", # bind = 1\n  true,\n]\n',
     "line 2, key `bind`: `true` is not a value for --bind"),
])
def test_mistakes_in_the_user_file_name_file_and_line(tmp_path, text: str, message: str) -> None:
    error = refused(tmp_path, user=text)
    shown = error.message.replace("\0", "\\x00")
    assert shown == f"{tmp_path}/rbox/rbox.toml, {message}"


# --- line numbers, for any spelling of the keys ----------------------------------------

NAMES = st.text(st.sampled_from("abcxyz-_09"), min_size=1, max_size=6)


def spell(name: str, style: int) -> str:
    return (name, f'"{name}"', f"'{name}'")[style]


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, dict[tuple[str, ...], int]]:
    """A TOML text and the line each key is set on, in the shapes TOML allows: table
    headers, inline tables, dotted keys; bare, "quoted" and 'literal' keys; values
    over several lines, holding text that looks like a key."""
    text = "# generated\n"
    expected: dict[tuple[str, ...], int] = {}

    def quoted(name: str) -> str:
        return (name, f'"{name}"', f"'{name}'")[draw(st.integers(0, 2))]

    def add(line: str, *keys: tuple[str, str]) -> None:
        nonlocal text
        expected.update({key: text.count("\n") + 1 for key in keys})
        text += line + "\n"

    headers = False
    for table in draw(st.lists(NAMES, min_size=1, max_size=4, unique=True)):
        keys = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
        # Top-level shapes must come before the first [header]: after it they would
        # belong to that table.
        shape = draw(st.sampled_from(["header"] if headers else ["header", "inline", "dotted"]))
        if shape == "inline":
            inner = ", ".join(f"{quoted(k)} = {draw(st.integers(0, 9))}" for k in keys)
            add(f"{quoted(table)} = {{ {inner} }}", *((table, k) for k in keys))
            continue
        if shape == "header":
            headers = True
            add(f"[ {quoted(table)} ]")
        for key in keys:
            prefix = f"{quoted(table)} . " if shape == "dotted" else ""
            value = draw(st.sampled_from(['"a = b"', "'x'", '"""\nk = 1\n"""', "'''\n[t]\n'''",
                                          "[\n  1, # z = 2\n  2,\n]", "5", "{ q = 1 }"]))
            add(f"{prefix}{quoted(key)} = {value}", (table, key))
    return text, expected


@settings(max_examples=150)
@given(documents())
def test_key_lines_finds_every_key_where_it_is_set(doc: tuple[str, dict[tuple[str, ...], int]]) -> None:
    text, expected = doc
    data = tomllib.loads(text)      # the generator writes valid TOML only
    assert {(t, k) for t, table in data.items() if isinstance(table, dict) for k in table} >= set(expected)
    found = config.key_lines(text)
    assert {key: found.get(key) for key in expected} == expected


@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
def test_a_configuration_file_that_is_no_text_file_is_refused_without_hanging(tmp_path, kind: str) -> None:
    import os

    (tmp_path / "rbox").mkdir()
    path = tmp_path / "rbox" / "rbox.toml"
    if kind == "fifo":
        os.mkfifo(path)             # opening it to read would wait for a writer forever
    elif kind == "device":
        path.symlink_to("/dev/zero")  # reading it would never end
    else:
        path.write_text("# padding\n" * 200_000)
    error = refused(tmp_path)
    assert error.message == f"`{path}` is " + ("larger than 1024 KiB" if kind == "huge" else "not a regular file")

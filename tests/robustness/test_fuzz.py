"""Fuzzed input with hypothesis: argument lists built from the real option table
(rootless/options.py) and configuration files, with garbage and bytes that are not
UTF-8 among the values.

The oracle: never a traceback or an internal error; rbox's own failures exit 125 with
one `rbox: error:` and a `hint:` (126/127 likewise, for a command that cannot run);
nothing of the user's left behind. Most runs are --dry-run (fast, no side effects);
some really run, with --net=none last so that no helper is started for garbage.
Example counts are modest (the suite's time budget); CI derandomizes (conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess

from hypothesis import event, given, settings
from hypothesis import strategies as st

from rootless import config, options, spec
from rootless.errors import RboxError
from tests.integration.helpers import RBOX, rbox_env
from tests.robustness.leftovers import Snapshot, wait_clean

# Text that may hold anything but NUL (which no argument can): control characters,
# other scripts, and bytes that are not UTF-8 (surrogate escapes, PEP 383).
NOT_UTF8 = st.binary(min_size=1, max_size=6).map(lambda b: os.fsdecode(b.replace(b"\0", b"\x80")))
GARBAGE = st.one_of(st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=12),
                    NOT_UTF8, st.just(""), st.text("-=:/.,", max_size=4))
PATHS = st.one_of(st.sampled_from(["/tmp", "/tmp/fuzz", "/etc", "/proc", "/proc/sys", "/proc/self", "/", ".", "..",
                                   "relative", "/no/such/path", "/etc/hostname", "/dev/null", "/tmp:/x", "/etc:/",
                                   "/tmp:relative", "/usr:/usr/x", "//tmp//", "/" + "a" * 5000]),
                  NOT_UTF8.map(lambda s: "/tmp/" + s), GARBAGE)
BY_METAVAR = {
    "SIZE": st.sampled_from(["512M", "4G", "0", "inf", "1e400", "-1", "nan", "1.5G", "99999999T", "4096", "4095",
                             "0x10", "1_000_000K", "9" * 5000]),
    "N": st.sampled_from(["1", "2", "3", "0", "-1", "1.5", "0.01", "4096", "10000", "10001", "inf", "nan", "1e400",
                          "9" * 5000, "٣"]),
    "K=V": st.sampled_from(["A=1", "A", "=x", "PATH=", "HOME=/nowhere", "A=\u00e9"]),
    "K": st.sampled_from(["PATH", "HOME", "", "=", "X"]),
    "NAME": st.sampled_from(["box", "", "-x", "a" * 65, "a.b-c", "x y", "gpu"]),
    "[HOST_IP:]HOST_PORT:SANDBOX_PORT[/tcp|/udp]": st.sampled_from(
        ["18080:80", "0.0.0.0:18081:80/udp", "80", "1:2:3:4", "x:80", "0:80", "65536:80", "18080:80/sctp",
         "٣:80", "1.2.3.256:1:2", "9" * 5000 + ":80"]),
}


# Values that pass the checks (the sandbox then really starts), per metavar.
PLAUSIBLE = {"SIZE": st.sampled_from(["512M", "4G"]), "N": st.sampled_from(["1", "64", "0.5"]),
             "K=V": st.sampled_from(["A=1", "B", "C=\u00e9"]), "K": st.sampled_from(["HOME", "X"]),
             "NAME": st.sampled_from(["box", "a.b-c"]), "DIR": st.sampled_from(["/tmp", "/usr", "/"]),
             "DST": st.sampled_from(["/tmp/a", "/opt/x", "/var/tmp/y", "/etc"]),
             "PATH": st.sampled_from(["/etc/hostname", "/usr/share", "/var/tmp"]),
             "SRC[:DST]": st.sampled_from(["/usr/share:/mnt", "/etc:/tmp/etc", "/srv"])}


# What a plausible run with --net=none refuses anyway (ports, limits without a user
# manager, a profile without a file, -t against -T): left out of plausible runs.
REFUSED_WITH_NET_NONE = {"publish", "allow_host_loopback", "profile", "tty", "no_tty", "dry_run", "memory",
                         "memory_high", "memory_swap", "cpus", "cpu_weight", "pids_limit", "io_weight"}


@st.composite
def option_words(draw: st.DrawFn, odd: bool = True) -> list[str]:
    """One option of `rbox run`, spelled any way the parser takes, with a value: any
    value (odd) or mostly plausible ones (the sandbox then really starts)."""
    opt = draw(st.sampled_from([o for o in options.SANDBOX_OPTIONS if o.dest not in ("help", "debug")
                                and (odd or o.dest not in REFUSED_WITH_NET_NONE)]))
    name = draw(st.sampled_from(opt.names))
    if not opt.takes_value:
        return [name] if draw(st.integers(0, 9)) or not odd else [name + "=" + draw(GARBAGE)]
    if opt.choices:
        values = [st.sampled_from(opt.choices)]
    else:
        values = [PLAUSIBLE.get(opt.metavar or "", GARBAGE)]
    if odd or draw(st.integers(0, 9)) == 0:
        values += [BY_METAVAR.get(opt.metavar or "", PATHS), GARBAGE]
    value = draw(st.one_of(*values))
    spelling = draw(st.integers(0, 2))
    if spelling == 0 or value.startswith("-"):
        return [name, value]
    return [f"{name}={value}"] if name.startswith("--") else [name + value]


@st.composite
def argument_lists(draw: st.DrawFn, odd: bool = True) -> list[str]:
    """Options of the table; now and then a word that is none, somewhere among them."""
    words = [w for group in draw(st.lists(option_words(odd), max_size=6)) for w in group]
    if odd and draw(st.integers(0, 9)) == 0:
        words.insert(draw(st.integers(0, len(words))), draw(st.sampled_from(["--frobnicate", "-", "-x", "--"])))
    return words


ARGUMENTS = argument_lists()
COMMANDS = st.one_of(*[st.just(["true"])] * 3, st.just(["sh", "-c", "exit 3"]),
                     st.lists(GARBAGE, min_size=1, max_size=2))


def check(r: subprocess.CompletedProcess[bytes], allowed: tuple[int, ...]) -> None:
    event(f"exit {r.returncode}")
    err = r.stderr.decode(errors="replace")
    assert "Traceback" not in err and "internal error" not in err, err
    assert r.returncode in allowed, (r.returncode, err)
    if r.returncode in (125, 126, 127):
        lines = [line for line in err.splitlines() if not line.startswith("rbox: warning:")]
        starts = [i for i, line in enumerate(lines) if line.startswith("rbox: error: ")]
        assert len(starts) == 1, err
        assert len(lines) > starts[0] + 1 and lines[starts[0] + 1].startswith("hint: "), err


def rbox(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*RBOX, *args], env=rbox_env(env), capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_fuzzed_option_words_parse_into_a_spec_or_a_spec_error() -> None:
    # In-process and fast: the parser and the checks before anything starts.
    @settings(max_examples=400)
    @given(ARGUMENTS, COMMANDS)
    def parse(words: list[str], command: list[str]) -> None:
        try:
            parsed = options.parse(["run", *words, "--", *command])
            spec.from_parsed(parsed, dict(os.environ), "/tmp", False)
        except RboxError as e:
            assert e.hint, e.message
            assert e.exit_code == 125

    parse()


def test_fuzzed_command_lines_dry_run(tmp_path) -> None:
    before = Snapshot([])

    @settings(max_examples=150)
    @given(ARGUMENTS, COMMANDS)
    def run(words: list[str], command: list[str]) -> None:
        check(rbox(["run", "--dry-run", *words, "--", *command]), (0, 125))

    run()
    assert not wait_clean(before)


def test_fuzzed_command_lines_really_run(tmp_path) -> None:
    before = Snapshot([])

    @settings(max_examples=40)
    @given(argument_lists(odd=False), st.sampled_from(["-T", "-t"]), COMMANDS)
    def run(words: list[str], tty: str, command: list[str]) -> None:
        check(rbox(["run", *words, "--net=none", tty, "--", *command]), (0, 3, 125, 126, 127))

    run()
    assert not wait_clean(before)


# --- configuration files ---------------------------------------------------------------

KEYS = st.one_of(st.sampled_from([o.names[-1].removeprefix("--") for o in options.SANDBOX_OPTIONS]),
                 st.text("abcdefgh-_", min_size=1, max_size=8))
SCALARS = st.one_of(st.booleans(), st.integers(-10, 10**20), st.sampled_from([float("inf"), float("nan"), 1e400, 0.5]),
                    st.text(st.characters(blacklist_categories=("Cs",)), max_size=10),
                    st.sampled_from(["4G", "none", "/tmp", "/proc", "A=\u0000", "8080:80", "1979-05-27"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(KEYS, inner, max_size=2)), max_leaves=6)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else ("inf" if value > 0 else "-inf") if value in (float("inf"),
                                                                                        float("-inf")) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)         # a TOML basic string, \uXXXX escapes and all
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


@st.composite
def config_files(draw: st.DrawFn) -> bytes:
    """A configuration file: mostly well-formed TOML with odd settings, sometimes broken."""
    lines = []
    for table in draw(st.lists(st.sampled_from(["defaults", "profiles.p", "profiles.'q r'", "ceilings", "other"]),
                               max_size=3, unique=True)):
        lines.append(f"[{table}]")
        for key, value in draw(st.dictionaries(KEYS, VALUES, max_size=4)).items():
            lines.append(f"{json.dumps(key) if draw(st.booleans()) else key} = {toml_value(value)}")
    text = "\n".join(lines).encode()
    mangle = draw(st.integers(0, 9))
    if mangle == 0:
        return text + b"\n[broken\n"
    if mangle == 1:
        return text + b"\nhostname = \"\xff\"\n"
    return text + b"\n"


def test_fuzzed_user_configuration_files(tmp_path) -> None:
    before = Snapshot([])
    (tmp_path / "rbox").mkdir()

    @settings(max_examples=60)
    @given(config_files(), st.sampled_from([[], ["--profile", "p"], ["--profile", "q r"]]))
    def run(text: bytes, profile: list[str]) -> None:
        (tmp_path / "rbox" / "rbox.toml").write_bytes(text)
        check(rbox(["run", "--dry-run", *profile, "--", "true"], {"XDG_CONFIG_HOME": str(tmp_path)}), (0, 125))

    run()
    assert not wait_clean(before)


def test_fuzzed_site_files_refuse_or_apply_their_ceilings(tmp_path) -> None:
    # In-process (the site file is /etc/rbox/rbox.toml, which the test cannot write).
    @settings(max_examples=200)
    @given(config_files())
    def load(text: bytes) -> None:
        (tmp_path / "site.toml").write_bytes(text)
        try:
            cfg = config.load({"HOME": str(tmp_path / "nohome")}, None, site=str(tmp_path / "site.toml"))
            limits = config.apply_ceilings(None, cfg.ceilings)
        except RboxError as e:
            assert e.hint, e.message
            return
        # Every ceiling the file sets is applied: none is silently dropped.
        for key in cfg.ceilings:
            attr = {"pids-limit": "pids"}.get(key, key.replace("-", "_"))
            assert getattr(limits, attr) is not None, key

    load()

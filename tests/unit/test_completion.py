"""The completion files are what the option table generates now, are valid shell, and,
run by the shells themselves, offer exactly the table's commands and options.

bash: the real `_rbox` function, called the way bash's programmable completion calls
it (COMP_WORDS, COMP_CWORD), in a bash subprocess. zsh: its completion system needs an
interactive shell with zle, so the file runs in `zsh -c` with `_arguments`,
`_describe` and `_files` replaced by functions that print what they were given: the
option specs the file really passes, for the command on the line, parsed from that.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from rootless import completion, options

FILES = Path(__file__).resolve().parents[2] / "completions"
GLOBAL = [name for opt in options.GLOBAL_OPTIONS for name in opt.names]


def table(command: str) -> list[str]:
    return [name for opt in options.options_for(command) for name in opt.names]


@pytest.mark.parametrize(("name", "generate"), [("rbox.bash", completion.bash), ("_rbox", completion.zsh)])
def test_committed_files_match_the_option_table(name: str, generate) -> None:
    assert (FILES / name).read_text() == generate(), \
        f"regenerate: python -m rootless.completion {'bash' if name.endswith('bash') else 'zsh'} > completions/{name}"


def bash_complete(*words: str) -> list[str]:
    """COMPREPLY of the real _rbox for the command line `words` (the last one is being typed)."""
    bash = shutil.which("bash")
    assert bash, "bash runs the tests' shell scripts everywhere"
    line = " ".join(shlex.quote(w) for w in words)
    script = (f"source {shlex.quote(str(FILES / 'rbox.bash'))}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
              'COMPREPLY=(); _rbox; printf "%s\\n" "${COMPREPLY[@]}"')
    r = subprocess.run([bash, "--norc", "--noprofile", "-c", script], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stderr) == (0, "")
    return [w for w in r.stdout.split("\n") if w]


def test_bash_offers_the_commands_and_the_global_options() -> None:
    assert bash_complete("rbox", "") == [*options.COMMANDS, *GLOBAL]


@pytest.mark.parametrize("command", list(options.COMMANDS))
@pytest.mark.parametrize("typed", ["", "-"])
def test_bash_offers_exactly_the_options_of_each_command(command: str, typed: str) -> None:
    assert bash_complete("rbox", command, typed) == table(command)
    # After other options too: the command is found wherever it is on the line.
    assert bash_complete("rbox", "--debug", command, table(command)[0], typed) == table(command)


@pytest.mark.parametrize("opt", [o for o in options.SANDBOX_OPTIONS if o.takes_value], ids=lambda o: o.names[-1])
def test_bash_completes_the_value_of_each_option_that_takes_one(opt: options.Opt, tmp_path) -> None:
    for name in opt.names:
        offered = bash_complete("rbox", "run", name, "")
        if opt.choices:
            assert offered == list(opt.choices)
        elif opt.metavar in completion.PATH_METAVARS:
            # compgen -f: files of the current directory (the test's, so empty is fine),
            # never option names.
            assert not any(w.startswith("-") for w in offered), offered
        else:
            assert offered == [], f"{name} takes {opt.metavar}: no option names there"


def test_the_bash_file_parses() -> None:
    r = subprocess.run(["bash", "-n", str(FILES / "rbox.bash")], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stderr) == (0, "")


ZSH_STUBS = ("_arguments() { print -rl -- \"$@\" }; _describe() { print -rl -- \"${(@P)2}\" }; "
             "_files() { :; }; _normal() { :; }; ")


def zsh_specs(*words: str) -> list[str]:
    zsh = shutil.which("zsh")
    assert zsh
    line = " ".join(shlex.quote(w) for w in words)
    script = f"{ZSH_STUBS} words=({line}); CURRENT={len(words)}; source {shlex.quote(str(FILES / '_rbox'))}"
    r = subprocess.run([zsh, "-f", "-c", script], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stderr) == (0, "")
    return [w for w in r.stdout.split("\n") if w]


@pytest.mark.needs_zsh
def test_the_zsh_file_parses() -> None:
    r = subprocess.run(["zsh", "-n", str(FILES / "_rbox")], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stderr) == (0, "")


@pytest.mark.needs_zsh
def test_zsh_offers_the_commands() -> None:
    assert [spec.split(":", 1)[0] for spec in zsh_specs("rbox", "")] == list(options.COMMANDS)


@pytest.mark.needs_zsh
@pytest.mark.parametrize("command", list(options.COMMANDS))
def test_zsh_offers_exactly_the_options_of_each_command(command: str) -> None:
    # A spec is `[*]NAME[help]:ACTION`; `*::command:_normal` is the command after the options.
    names = [m.group(1) for spec in zsh_specs("rbox", command, "") if (m := re.match(r"\*?(-[^\[]+)\[", spec))]
    assert names == table(command)

"""The completion files are what the option table generates now, and are valid shell."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from rootless import completion, options

FILES = Path(__file__).resolve().parents[2] / "completions"


@pytest.mark.parametrize(("name", "generate"), [("rbox.bash", completion.bash), ("_rbox", completion.zsh)])
def test_committed_files_match_the_option_table(name: str, generate) -> None:
    assert (FILES / name).read_text() == generate(), \
        f"regenerate: python -m rootless.completion {'bash' if name.endswith('bash') else 'zsh'} > completions/{name}"


def test_every_option_and_command_is_completed() -> None:
    text = completion.bash() + completion.zsh()
    for command in options.COMMANDS:
        assert command in text
        for opt in options.options_for(command):
            for name in opt.names:
                assert name in text


@pytest.mark.parametrize(("shell", "name"), [("bash", "rbox.bash"), ("zsh", "_rbox")])
def test_the_files_parse(shell: str, name: str) -> None:
    binary = shutil.which(shell)
    if binary is None:
        pytest.skip(f"{shell} is not installed")
    r = subprocess.run([binary, "-n", str(FILES / name)], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stderr) == (0, "")


def test_bash_completes_values_for_choices() -> None:
    script = (f"source {FILES / 'rbox.bash'}; COMP_WORDS=(rbox run --net ''); COMP_CWORD=3; _rbox; "
              'echo "${COMPREPLY[@]}"')
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert r.stdout.split() == ["slirp4netns", "pasta", "none", "host"]

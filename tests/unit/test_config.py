"""Configuration: precedence, profiles, ceilings, and errors naming file, line and key."""

from __future__ import annotations

import pytest
import tomllib  # noqa: F401 - imported before pyfakefs takes over the filesystem

from rootless import cgroups, config, options, spec  # noqa: F401 - idem
from rootless.errors import SpecError

SITE = "/etc/rbox/rbox.toml"
USER = "/home/u/.config/rbox/rbox.toml"
ENV = {"HOME": "/home/u", "PATH": "/usr/bin"}


def words(fs, site: str | None = None, user: str | None = None, profile: str | None = None) -> list[str]:
    if site is not None:
        fs.create_file(SITE, contents=site)
    if user is not None:
        fs.create_file(USER, contents=user)
    fs.create_dir("/work")
    import os

    os.chdir("/work")
    return config.load(ENV, profile).words


def test_site_then_user_then_profile(fs) -> None:
    w = words(fs, site='[defaults]\nhostname = "site"\nmemory = "4G"\n[profiles.p]\nnet = "none"\n',
              user='[defaults]\nhostname = "user"\n[profiles.p]\nhostname = "profile"\n', profile="p")
    assert w == ["--hostname", "site", "--memory", "4G", "--hostname", "user", "--net", "none",
                 "--hostname", "profile"]
    parsed = options.parse(["run", "--hostname", "cli", "x"], w)
    assert parsed.values["hostname"] == "cli"           # the command line wins
    assert parsed.values["net"] == "none" and parsed.values["memory"] == "4G"


def test_list_options_accumulate(fs) -> None:
    fs.create_dir("/data")
    w = words(fs, site='[defaults]\nro-bind = ["/data"]\nhide = ["/etc"]\n')
    parsed = options.parse(["run", "--tmpfs", "/t", "x"], w)
    assert parsed.values["mounts"] == [("--ro-bind", "/data"), ("--hide", "/etc"), ("--tmpfs", "/t")]


def test_flags(fs) -> None:
    assert words(fs, user="[defaults]\nclearenv = true\nallow-host-loopback = true\n") == [
        "--clearenv", "--allow-host-loopback"]


@pytest.mark.parametrize(("text", "message"), [
    ('[defaults]\nmemroy = "4G"\n', f"{USER}, line 2, key `memroy`: unknown setting"),
    ('[defaults]\n\n\nmemory = "lots"\n', f"{USER}, line 4, key `memory`: invalid size `lots` for --memory"),
    ('[defaults]\nnet = "wifi"\n', f"{USER}, line 2, key `net`: invalid value `wifi` for `--net`"),
    ('[defaults]\nhostname = ["a", "b"]\n', f"{USER}, line 2, key `hostname`: takes one value, not a list"),
    ('[defaults]\nclearenv = "yes"\n', f"{USER}, line 2, key `clearenv`: `yes` is not a value for --clearenv"),
    ('[defaults]\ndry-run = true\n', f"{USER}, line 2, key `dry-run`: `dry-run` is not a setting: it runs nothing"),
    ('[defualts]\nnet = "none"\n', f"{USER}, line 1: unknown table or key `defualts`"),
    ('[ceilings]\nmemory = "1G"\n', f"{USER}, line 1: unknown table or key `ceilings` (only the site file "
                                    "may set ceilings)"),
])
def test_mistakes_name_file_line_and_key(fs, text: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        words(fs, user=text)
    assert info.value.message == message


def test_toml_syntax_error_names_the_file(fs) -> None:
    with pytest.raises(SpecError, match=f"^{SITE}: .*line 1"):
        words(fs, site="[defaults\n")


def test_unknown_profile_lists_the_known_ones(fs) -> None:
    with pytest.raises(SpecError) as info:
        words(fs, site="[profiles.gpu]\nnet = \"host\"\n", profile="cpu")
    assert info.value.message == f"no profile `cpu` in {SITE}"
    assert info.value.hint == "profiles here: gpu"


def limits_with(fs, site: str, argv: list[str]):

    cfg_words = words(fs, site=site)
    parsed = options.parse(argv, cfg_words)
    s = spec.from_parsed(parsed, ENV, "/work", False)
    return config.apply_ceilings(s.limits, config.load(ENV, None).ceilings)


def test_a_ceiling_is_the_limit_when_none_is_asked(fs) -> None:
    limits = limits_with(fs, '[ceilings]\nmemory = "8G"\npids-limit = 512\n', ["run", "x"])
    assert (limits.memory, limits.pids) == (8 << 30, 512)


def test_asking_less_than_the_ceiling_is_fine(fs) -> None:
    limits = limits_with(fs, '[ceilings]\nmemory = "8G"\n', ["run", "--memory", "2G", "x"])
    assert limits.memory == 2 << 30


def test_asking_more_than_the_ceiling_is_refused_with_where_it_is_set(fs) -> None:
    with pytest.raises(SpecError) as info:
        limits_with(fs, '# site policy\n[ceilings]\ncpus = 4\nmemory = "8G"\n', ["run", "--memory", "16G", "x"])
    assert info.value.message == f"--memory 16G is above the site's ceiling of 8G ({SITE}, line 4)"


def test_a_user_default_cannot_raise_a_ceiling_either(fs) -> None:

    fs.create_file(SITE, contents='[ceilings]\npids-limit = 100\n')
    fs.create_file(USER, contents='[defaults]\npids-limit = 1000\n')
    fs.create_dir("/work")
    cfg = config.load(ENV, None)
    s = spec.from_parsed(options.parse(["run", "x"], cfg.words), ENV, "/work", False)
    with pytest.raises(SpecError, match="--pids-limit 1000 is above the site's ceiling of 100"):
        config.apply_ceilings(s.limits, cfg.ceilings)


def test_only_limits_can_be_ceilings(fs) -> None:
    with pytest.raises(SpecError, match="line 2: `net` cannot be a ceiling"):
        words(fs, site='[ceilings]\nnet = "none"\n')


def test_line_of() -> None:
    text = '[defaults]\nnet = "none"\n[profiles.a]\nnet = "host"\n"memory" = "1G"\n'
    assert config.line_of(text, "defaults", "net") == 2
    assert config.line_of(text, "profiles.a", "net") == 4
    assert config.line_of(text, "profiles.a", "memory") == 5
    assert config.line_of(text, "", "profiles") == 3

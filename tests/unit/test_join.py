"""--join's pure parts: Slurm's compressed task counts, the group's tag and size from the
launchers' environments, the options that must agree, the supervisor's command line.

Runs in: the test runner (pure logic; tests/slurm/test_join.py runs the real thing)."""

from __future__ import annotations

import pytest

from rootless import options, slurm
from rootless.errors import SpecError
from rootless.instance import group


@pytest.mark.parametrize(("value", "node", "expected"), [
    ("2", 0, 2), ("2(x3),1", 0, 2), ("2(x3),1", 2, 2), ("2(x3),1", 3, 1), ("2(x3),1", 4, None),
    ("1,4(x2)", 2, 4), ("", 0, None), ("2(x0)", 0, None), ("2(3)", 0, None), ("x", 0, None), ("2", -1, None),
])
def test_tasks_on_node(value: str, node: int, expected: int | None) -> None:
    assert slurm.tasks_on_node(value, node) == expected


STEP = {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0", "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "2(x3),1"}


def test_the_group_of_a_slurm_step() -> None:
    assert slurm.join_group(STEP, None, None) == ("42.0", 2)
    assert slurm.join_group({**STEP, "SLURM_NODEID": "3"}, None, None) == ("42.0", 1)
    assert slurm.join_group({**STEP, "SLURM_STEP_ID": "1"}, None, None) == ("42.1", 2)   # another step, another group
    assert slurm.join_group(STEP, "mine", "5") == ("mine", 5)                            # what is given wins


def test_the_group_of_an_mpirun_launch() -> None:
    env = {"OMPI_MCA_ess_base_jobid": "8494", "OMPI_COMM_WORLD_LOCAL_SIZE": "3", **STEP}
    assert slurm.join_group(env, None, None) == ("ompi.8494", 3)


@pytest.mark.parametrize(("environ", "tag", "count", "words"), [
    ({}, None, "2", "needs a TAG"),
    ({}, "t", None, "cannot tell how many ranks"),
    ({**STEP, "SLURM_STEP_TASKS_PER_NODE": "bad"}, None, None, "cannot tell how many ranks"),
    ({}, "../x", "2", "invalid --join tag"),
    ({}, ".x", "2", "invalid --join tag"),
    ({}, "t", "0", "invalid --join-count"),
    ({}, "t", "two", "invalid --join-count"),
])
def test_what_join_cannot_know_is_an_error(environ: dict[str, str], tag: str | None, count: str | None,
                                           words: str) -> None:
    with pytest.raises(SpecError) as e:
        slurm.join_group(environ, tag, count)
    assert words in str(e.value) and e.value.hint and e.value.exit_code == 125


def test_join_takes_an_optional_tag() -> None:
    assert options.parse(["run", "--join", "--", "true"]).values["join"] is True
    assert options.parse(["run", "--join=7.0", "true"]).values["join"] == "7.0"
    parsed = options.parse(["run", "--join-count", "4", "--join", "cmd"])
    assert parsed.values["join_count"] == "4" and parsed.args == ["cmd"]


def test_the_first_difference_is_named() -> None:
    mine = {"--net": "'none'", "--hostname": "'a'"}
    assert group.difference(mine, dict(mine)) is None
    assert group.difference(mine, {**mine, "--hostname": "'b'"}) == "--hostname"
    assert group.difference(mine, {}) == "--hostname"


def test_the_supervisors_command_line() -> None:
    argv = ["--debug", "run", "--join=t", "--join-count", "2", "-t", "--net=none", "--bind", "/x", "--", "./a", "b"]
    assert group.supervisor_argv(argv, ["./a", "b"], "join.t") == [
        "--debug", "run", "--net=none", "--bind", "/x", "--name", "join.t", "-T", "--", "sleep", "infinity"]
    argv = ["run", "--join-count=2", "--join", "./a"]
    assert group.supervisor_argv(argv, ["./a"], "join.t") == ["run", "--name", "join.t", "-T", "--", "sleep",
                                                               "infinity"]

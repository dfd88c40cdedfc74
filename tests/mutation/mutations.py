"""The mutations tests/mutation/run.py applies, one at a time: each breaks one safety
claim on purpose, and names the tests that must then fail.

Adding one is one entry:

    M("what the break would let a hostile command do",
      "rootless/FILE.py", "the original text (exactly once in the file)", "the broken text",
      FS + "test_that_catches_it"),

`also=[(file, original, broken), ...]` adds edits made at the same time (a generator and
the file it generates, say). Name a test by its pytest node id; a parametrized one by
its full id (`test_x[pasta]`) to run only that case. The original text must occur exactly
once: if the code changes under it, the check fails, and the entry is brought up to date.

The session keyring alone (init.new_session_keyring) is left out: the seccomp filter
in front of it makes it unobservable from inside (its removal is an equivalent mutant).
Left out for `rbox exec` (instance/join.py), each equivalent from inside: the joiner's
own session keyring (the filter answers ENOSYS first), its non-dumpable flag (it stays in
the host's PID namespace, out of the sandbox's sight), the check after the pidfd setns (it
matters only when stage-1's pid was reused within the exec), the cgroup join (no
delegated controllers on this host: the VM test bed's).
Left out on purpose: mutants the kernel makes equivalent (MS_SLAVE on `/`: a mount
namespace made in a less privileged user namespace turns shared mounts into slaves
anyway, mount_namespaces(7)); slirp4netns's kill at the end (its --exit-fd ends it too,
which is covered below); the FUSE keeper's death signal (when stage-1 dies, so does init,
and the keeper's control pipe reaches EOF: it stops its daemons and exits all the same).
"""

from __future__ import annotations

import os
from pathlib import Path

from rootless.options import options_for

FS = "tests/integration/test_filesystem.py::"
PROC = "tests/integration/test_process.py::"
NET = "tests/integration/test_net.py::"
IDS = "tests/integration/test_identity.py::"
CHECK = "tests/integration/test_check.py::"
TERM = "tests/integration/test_terminal.py::"
LIMITS = "tests/integration/test_limits_refused.py::"
U_USERNS = "tests/unit/test_userns.py::"
U_NET = "tests/unit/test_net.py::"
U_MAN = "tests/unit/test_manpage.py::"
U_COMPLETION = "tests/unit/test_completion.py::"
SEC = "tests/security/"
DAILY = "tests/integration/test_daily.py::"
TDAILY = "tests/integration/test_terminal_daily.py::"
SLURM = "tests/slurm/test_jobs.py::"
JOIN = "tests/slurm/test_join.py::"
UNPACK = "tests/unit/test_unpack.py::test_attack_stays_inside"
EXEC = "tests/integration/test_exec.py::"
SEC_EXEC = SEC + "test_exec.py::"
NAMED = "tests/integration/test_named.py::"
FAULTS = "tests/robustness/test_named_faults.py::"
SQUASH = "tests/unit/test_squash.py::"
SQUASH_RUN = "tests/integration/test_image_squash.py::"
PULL = "tests/integration/test_image_pull.py::"
RUN_WORDS = " ".join(name for opt in options_for("run") for name in opt.names)


class Mutation:
    def __init__(self, name: str, file: str, original: str, broken: str, *tests: str,
                 also: tuple[tuple[str, str, str], ...] = ()):
        assert tests, f"{name}: no test named"
        self.name, self.file, self.original, self.broken, self.tests = name, file, original, broken, tests
        self.edits = ((file, original, broken), *also)

    def check(self, tree: Path) -> list[str]:
        """What keeps this mutation from applying to `tree` (nothing when it applies)."""
        problems = []
        for file, original, _ in self.edits:
            path = tree / file
            found = path.read_text().count(original) if path.exists() else 0
            if found != 1:
                problems.append(f"{self.name}: {file} has {found} copies of {original.strip()[:80]!r} (want 1)")
        return problems

    def apply(self, tree: Path) -> dict[Path, str]:
        """Make the edits; the files' texts before them, for undo()."""
        before: dict[Path, str] = {}
        for file, original, broken in self.edits:
            path = tree / file
            before.setdefault(path, path.read_text())
            _write(path, path.read_text().replace(original, broken, 1))
        return before

    @staticmethod
    def undo(before: dict[Path, str]) -> None:
        for path, text in before.items():
            _write(path, text)


def _write(path: Path, text: str) -> None:
    """Write `text`, and make sure no stale compiled copy of the old text is used:
    a .pyc is checked against the source's mtime in whole seconds and its size, and a
    mutant and its undo can match in both."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))
    for stale in path.parent.joinpath("__pycache__").glob(f"{path.stem}.*.pyc"):
        stale.unlink()


M = Mutation
MUTATIONS = [
    # --- the read-only host, the private and hidden places (mounts.py, syscalls.py, rootfs.py)
    M("the host's root stays writable",
      "rootless/mounts.py", "        make_readonly(newroot, oldroot)\n", "",
      FS + "test_writes_to_the_host_root_fail_with_erofs"),
    M("--ro-bind binds read-write",
      "rootless/mounts.py", "            make_readonly(dst, oldroot)\n", "            pass\n",
      FS + "test_bind_and_ro_bind"),
    M("mount_setattr sets no read-only attribute",
      "rootless/syscalls.py", "attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)", "attr = _MountAttr(0, 0, 0, 0)",
      FS + "test_every_host_mount_is_read_only[mount_setattr]"),
    M("mount_setattr leaves the host's submounts writable",
      "rootless/syscalls.py", "AT_FDCWD, _b(path), AT_RECURSIVE,", "AT_FDCWD, _b(path), 0,",
      FS + "test_every_host_mount_is_read_only[mount_setattr]"),
    M("the pre-5.12 fallback remounts without MS_RDONLY",
      "rootless/mounts.py", "sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | keep", "sc.MS_REMOUNT | sc.MS_BIND | keep",
      FS + "test_every_host_mount_is_read_only[remount-each]"),
    M("the pre-5.12 fallback remounts only the top mount",
      "rootless/mounts.py", 'if point == path or point.startswith(path.rstrip("/") + "/"):', "if point == path:",
      FS + "test_every_host_mount_is_read_only[remount-each]"),
    M("the host's /tmp is shared",
      "rootless/mounts.py", 'Tmpfs("/tmp", "1777"), ', "",
      FS + "test_tmp_var_tmp_and_run_are_private[/tmp]"),
    M("the host's /var/tmp is shared",
      "rootless/mounts.py", 'Tmpfs("/var/tmp", "1777"), ', "",
      FS + "test_tmp_var_tmp_and_run_are_private[/var/tmp]"),
    M("the host's /run is shared",
      "rootless/mounts.py", 'Tmpfs("/run", "0755"),', "",
      FS + "test_tmp_var_tmp_and_run_are_private[/run/lock]"),
    M("--hide leaves the directory writable",
      "rootless/mounts.py", "(sc.MS_RDONLY if self.ro else 0)", "0",
      FS + "test_hide_a_directory_and_a_file"),
    M("--hide shows the directory",
      "rootless/mounts.py", '            Tmpfs(self.dst, "0755", ro=True).apply(oldroot, newroot)\n',
      "            pass\n",
      FS + "test_hide_a_directory_and_a_file"),
    M("--hide shows the file",
      "rootless/mounts.py", '_mount(oldroot + "/dev/null", dst,', "_mount(oldroot + self.dst, dst,",
      FS + "test_hide_a_directory_and_a_file"),
    M("--tmpfs is ignored",
      "rootless/mounts.py", '            ops.append(Tmpfs(m.dst, "0755", given=m.given))\n', "            pass\n",
      FS + "test_tmpfs_option"),
    M("--home=tmpfs shows the real home",
      "rootless/mounts.py", '        ops.append(Tmpfs(spec.home, "0700"))\n', "        pass\n",
      FS + "test_home_modes[tmpfs-ok]"),
    M("the host's /proc instead of the sandbox's",
      "rootless/mounts.py", '_mount("proc", newroot + "/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,',
      '_mount(oldroot + "/proc", newroot + "/proc", None, sc.MS_BIND | sc.MS_REC,',
      PROC + "test_command_is_pid_2_and_proc_shows_only_the_sandbox"),
    M("a host device in the sandbox's /dev",
      "rootless/mounts.py", '"urandom", "tty")', '"urandom", "tty", "console")',
      FS + "test_minimal_dev"),
    M("mounts in the wrong order: a parent's tmpfs covers its children",
      "rootless/mounts.py", "key=lambda op: depth(op.dst))", "key=lambda op: -depth(op.dst))",
      FS + "test_current_directory_is_writable_and_the_default_workdir"),
    M("the writable workspace stays mounted over the new root after pivot_root",
      "rootless/rootfs.py", '        sc.umount2(".", sc.MNT_DETACH)\n', "",
      FS + "test_every_host_mount_is_read_only[mount_setattr]"),

    # --- namespaces, privileges, the command's session (stage1.py, payload.py, syscalls.py)
    M("--net=none shares the host's network namespace",
      "rootless/stage1.py", '    if spec.net != "host":\n', "    if False:\n",
      FS + "test_net_none_has_only_loopback_and_it_is_up"),
    M("the host's IPC namespace is shared",
      "rootless/stage1.py", "sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWCGROUP",
      "sc.CLONE_NEWUTS | sc.CLONE_NEWCGROUP",
      PROC + "test_the_hosts_ipc_objects_are_invisible"),
    M("the capability bounding set is kept",
      "rootless/syscalls.py", "    for cap in range(64):\n", "    for cap in range(0):\n",
      PROC + "test_no_new_privs_and_no_capabilities_in_the_default_identity",
      SEC_EXEC + "test_exec_is_as_confined_as_the_command"),
    M("no NO_NEW_PRIVS: setuid binaries inside gain privileges",
      "rootless/payload.py", "    sc.set_no_new_privs()\n", "    pass\n",
      PROC + "test_no_new_privs_and_no_capabilities_in_the_default_identity",
      PROC + "test_no_new_privs_with_root_identity_too",
      SEC_EXEC + "test_exec_is_as_confined_as_the_command"),
    M("the command shares rbox's session and controlling terminal (TIOCSTI)",
      "rootless/payload.py", '{"setsid": True}', '{"setsid": False}',
      PROC + "test_non_terminal_stdin_gets_a_new_session_without_a_terminal",
      TERM + "test_tiocsti_inside_cannot_type_into_the_callers_terminal[no-tty]"),

    # --- nothing outlives rbox: death signals, set-up signals, PID 1 (stage1.py, init.py, parent.py)
    M("stage-1 has no death signal: kill -9 of rbox leaves the sandbox running",
      "rootless/stage1.py", "    sc.set_pdeathsig(signal.SIGKILL)\n    if os.getppid()", "    if os.getppid()",
      PROC + "test_kill_9_of_rbox_leaves_no_process_behind"),
    M("PID 1 has no death signal: it outlives stage-1",
      "rootless/init.py", "    sc.set_pdeathsig(signal.SIGKILL)           #", "    #",
      PROC + "test_kill_9_of_rbox_leaves_no_process_behind"),
    M("signals are not blocked during set-up: SIGTERM kills rbox outright",
      "rootless/parent.py", "    block(FORWARDED)\n    sigfd = signalfd(FORWARDED)", "    sigfd = signalfd(FORWARDED)",
      PROC + "test_sigterm_during_setup_exits_143_and_leaves_nothing"),
    M("SIGTERM during set-up is ignored: the command runs anyway",
      "rootless/parent.py", "            if signo in TERMINATING:\n                raise Interrupted(signo)\n", "",
      PROC + "test_sigterm_during_setup_exits_143_and_leaves_nothing"),
    M("an interrupted set-up leaves stage-1 running",
      "rootless/parent.py", "                os.kill(self.stage1, signal.SIGKILL)\n", "                pass\n",
      PROC + "test_sigterm_during_setup_exits_143_and_leaves_nothing"),
    M("PID 1 leaves the leftovers to the kernel's SIGKILL",
      "rootless/init.py", "    kill_leftovers()\n    return code", "    return code",
      PROC + "test_leftovers_get_sigterm_and_a_grace_period_to_clean_up"),
    M("PID 1 gives leftovers no grace period",
      "rootless/init.py", "LEFTOVER_GRACE = 2.0", "LEFTOVER_GRACE = 0.0",
      PROC + "test_leftovers_get_sigterm_and_a_grace_period_to_clean_up"),
    M("PID 1 reaps only the command: orphans stay zombies",
      "rootless/init.py", "os.waitpid(-1, os.WNOHANG | (os.WUNTRACED if chan else 0))",
      "os.waitpid(command, os.WNOHANG | (os.WUNTRACED if chan else 0))",
      PROC + "test_orphans_are_reaped_by_pid_1"),

    # --- --dry-run (parent.py)
    M("--dry-run starts the network helper",
      "rootless/parent.py", "    if spec.dry_run:\n", "    if spec.dry_run and (make_driver(spec) or True):\n",
      FS + "test_dry_run_starts_no_network_helper_and_no_limits[slirp4netns]"),
    M("--dry-run runs the command",
      "rootless/parent.py", "    if spec.dry_run:\n", "    if False:\n",
      FS + "test_dry_run_prints_the_plan_and_runs_nothing"),

    # --- the network helpers (net/slirp.py, net/pasta.py, net/ports.py)
    M("slirp4netns lets the sandbox reach the host's loopback",
      "rootless/net/slirp.py", '        argv.append("--disable-host-loopback")\n', "        pass\n",
      NET + "test_host_loopback_is_refused_by_default_with_slirp4netns"),
    M("slirp4netns runs unconfined (no --enable-sandbox, --enable-seccomp)",
      "rootless/net/slirp.py", '    for hardening in ("--enable-sandbox", "--enable-seccomp"):',
      "    for hardening in ():",
      NET + "test_slirp4netns_runs_confined"),
    M("an old slirp4netns without --disable-host-loopback is accepted",
      "rootless/net/slirp.py", '    if not allow_host_loopback and "--disable-host-loopback" not in features:',
      "    if False:",
      U_NET + "test_old_slirp4netns_is_refused_rather_than_opening_the_host_loopback"),
    M("slirp4netns survives kill -9 of rbox (no --exit-fd)",
      "rootless/net/slirp.py", ', f"--exit-fd={EXIT_FD}"]', "]",
      NET + "test_no_helper_is_left_after_exit_kill_or_sigkill_of_rbox[slirp4netns]"),
    M("pasta maps the gateway to the host's loopback (no --no-map-gw)",
      "rootless/net/pasta.py", '        argv.append("--no-map-gw")\n', "        pass\n",
      NET + "test_the_gateway_reaches_the_host_loopback_only_when_allowed[pasta-False-timeout]"),
    M("pasta forwards the host's TCP ports into the sandbox",
      "rootless/net/pasta.py", '"--tcp-ns", "none"', '"--tcp-ns", "auto"',
      NET + "test_host_loopback_ports_are_not_forwarded_into_the_sandbox_with_pasta"),
    M("pasta forwards the host's UDP ports into the sandbox",
      "rootless/net/pasta.py", '"--udp-ns", "none"', '"--udp-ns", "auto"',
      NET + "test_host_loopback_ports_are_not_forwarded_into_the_sandbox_with_pasta"),
    M("pasta survives kill -9 of rbox (its watchdog does not stop it)",
      "rootless/net/pasta.py", '(read _ <&3; kill -TERM "$p" 2>/dev/null)', "(read _ <&3; true)",
      NET + "test_no_helper_is_left_after_exit_kill_or_sigkill_of_rbox[pasta]"),
    M("published ports listen on every interface by default",
      "rootless/net/ports.py", 'DEFAULT_HOST_IP = "127.0.0.1"', 'DEFAULT_HOST_IP = "0.0.0.0"',
      U_NET + "test_publish_specs"),

    # --- the id maps (userns.py)
    M("the gid map is built from /etc/subuid",
      "rootless/userns.py", "subid_ranges(name, uid, path, subgid,", "subid_ranges(name, uid, path, subuid,",
      U_USERNS + "test_plan_for_root_with_distinct_uid_and_gid_ranges"),
    M("newgidmap is given the uid map",
      "rootless/userns.py", "helper_argv(plan.newgidmap, pid, plan.gid_map)",
      "helper_argv(plan.newgidmap, pid, plan.uid_map)",
      U_USERNS + "test_apply_runs_newgidmap_and_newuidmap_with_the_literal_maps"),
    M("your own id is mapped to another outer id",
      "rootless/userns.py", "    extents = [(own, own, 1)]\n", "    extents = [(own, own + 1, 1)]\n",
      U_USERNS + "test_plan_for_your_own_ids_with_distinct_uid_and_gid_ranges",
      IDS + "test_uid_and_gid_maps_are_the_documented_layout[own-id]"),

    # --- what rbox tells the user (hostcheck.py, cgroups.py, the man page, completion)
    M("rbox check reports a false fail",
      "rootless/hostcheck.py", '    if os.access(device, os.R_OK | os.W_OK):\n        return Finding(name, "ok", "us',
      '    if not os.access(device, os.R_OK | os.W_OK):\n        return Finding(name, "ok", "us',
      CHECK + "test_check_on_a_host_where_rbox_runs_has_no_fail_and_exits_0"),
    M("limits without cgroup2 are not refused",
      "rootless/cgroups.py", '    if not cgroup2_mounted_at(read("/proc/self/mountinfo")):', "    if False:",
      LIMITS + "test_limits_without_cgroup2_are_refused"),
    M("the man page loses an option's entry (the option is still named in the text)",
      "man/rbox.1", ".TP\n.B \\-\\-allow\\-host\\-loopback\n", "",
      U_MAN + "test_every_option_of_every_command_has_an_entry"),
    M("bash completion drops -t from `rbox run` (the committed file: what users install)",
      "completions/rbox.bash", f'run) COMPREPLY=($(compgen -W "{RUN_WORDS}"',
      f'run) COMPREPLY=($(compgen -W "{RUN_WORDS.replace(" -t --tty", " --tty")}"',
      U_COMPLETION + "test_bash_offers_exactly_the_options_of_each_command"),
    M("zsh completion drops --json of rbox check (the generator and its file alike)",
      "rootless/completion.py", "        for opt in options_for(command):\n            desc",
      '        for opt in options_for(command)[command == "check":]:\n            desc',
      U_COMPLETION + "test_zsh_offers_exactly_the_options_of_each_command",
      also=(("completions/_rbox", "        '--json[print the findings as JSON]' \\\n", ""),)),

    # --- containment (issue #10): what the command could reach past the sandbox
    M("no nested user namespace: --root owns the mounts rbox made (remount / rw, umount a --hide)",
      "rootless/init.py", "    enter_nested_userns(link)\n", "    link.close()\n",
      SEC + "test_root_mounts.py::test_root_cannot_remount_the_host_read_write[subid]",
      SEC + "test_root_mounts.py::test_root_cannot_unmount_a_hide[subid]"),
    M("setgroups allowed despite a supplementary group: --root drops it and passes a negative permission",
      "rootless/userns.py", '    if mode == "single" or set(groups) - {gid}:\n', '    if mode == "single":\n',
      SEC + "test_root_mounts.py::test_root_cannot_drop_a_group_to_pass_a_negative_group_permission[subid]"),
    M("PID 1 dumpable while the command runs: its descriptors (the pipe to rbox) are reachable",
      "rootless/payload.py", "    sc.set_dumpable(False)\n", "    sc.set_dumpable(True)\n",
      SEC + "test_root_mounts.py::test_pid1_is_out_of_reach[subid]"),
    M("inherited descriptors left open: the command writes through a caller's fd",
      "rootless/cli.py", "    fds.seal(the_spec.pass_fds)\n", "    pass\n",
      SEC + "test_fds.py::test_the_command_sees_only_0_1_2_of_1000_inherited_descriptors",
      SEC + "test_fds.py::test_a_directory_descriptor_of_a_read_only_path_is_not_a_way_out"),
    M("standard descriptors not reserved: a closed stdin lets rbox's own fds land on 0",
      "rootless/cli.py", "    fds.reserve_stdio()", "    pass",
      SEC + "test_fds.py::test_rbox_works_with_standard_descriptors_closed"),
    M("no keyring filter: the command plants a key in the caller's user keyring",
      "rootless/payload.py", "    seccomp.deny_keyrings()\n", "    pass\n",
      SEC + "test_keyring.py::test_the_sandbox_cannot_plant_a_key_in_the_callers_user_keyring",
      SEC + "test_keyring.py::test_the_sandbox_can_neither_find_nor_read_the_callers_keys_nor_plant_one",
      SEC_EXEC + "test_exec_can_neither_find_nor_read_the_callers_keys_nor_plant_one"),
    M("the keyring filter forgets keyctl (the i386/x86_64 tables' last number)",
      "rootless/seccomp.py", '"x86_64": ((0xC000003E, 248, 249, 250)', '"x86_64": ((0xC000003E, 248, 249, 249)',
      "tests/unit/test_seccomp.py::test_the_kernels_numbers_are_refused_literally",
      SEC + "test_keyring.py::test_the_sandbox_cannot_plant_a_key_in_the_callers_user_keyring"),
    M("helpers found through relative PATH entries: a planted slirp4netns runs on the host",
      "rootless/userns.py", '        if not d.startswith("/"):\n            continue\n', "",
      SEC + "test_helper_path.py::test_planted_helpers_in_relative_path_entries_never_run"),
    M("the cwd always bound: started from $HOME the whole home is writable",
      "rootless/spec.py", '    want_cwd = cwd != "/" and (reason is None or forced)\n', '    want_cwd = cwd != "/"\n',
      SEC + "test_cwd.py::test_started_from_home_the_home_stays_read_only_and_a_warning_says_so"),
    M("option paths not resolved: an alias lets a later bind undo a --hide",
      "rootless/spec.py", "        return view.resolve(path)\n", "        return os.path.normpath(path)\n",
      SEC + "test_symlink_paths.py::test_a_hidden_file_stays_hidden_whatever_alias_names_it"),
    M("the state directory is not verified: another user's directory catches rbox's sockets",
      "rootless/state.py", "    if st.st_uid != os.getuid():\n        return \"is not yours\"\n", "",
      SEC + "test_state_dir.py::test_a_planted_directory_is_refused_and_left_alone",
      also=(("rootless/state.py", "    if stat.S_IMODE(st.st_mode) != 0o700:\n        return f",
             "    if False:\n        return f"),)),

    # --- named sandboxes and `rbox exec` (issue #15, rootless/instance)
    M("exec stays in U1: uid 0 of a --root sandbox gets capabilities over its host name, its network",
      "rootless/instance/join.py", '    sc.setns(ns["user2"], sc.CLONE_NEWUSER)\n', "",
      SEC_EXEC + "test_exec_has_no_capability_over_what_u1_owns"),
    M("exec stays in the host's mount namespace: your files are writable from inside",
      "rootless/instance/join.py", '    sc.setns(ns["mnt2"], sc.CLONE_NEWNS)\n', "",
      SEC_EXEC + "test_exec_cannot_remount_the_host_or_unmount_a_hide"),
    M("exec skips the PID namespace: the exec'd command is in the host's",
      "rootless/instance/join.py", '    sc.setns(ns["pid"], sc.CLONE_NEWPID)\n', "",
      SEC_EXEC + "test_exec_is_as_confined_as_the_command"),
    M("exec skips the network namespace: the exec'd command is on the host's network",
      "rootless/instance/join.py", '"net": sc.CLONE_NEWNET, ', "",
      EXEC + "test_lifecycle_start_list_exec_stop"),
    M("the sandbox's namespace descriptors reach the exec'd command",
      "rootless/instance/commands.py", "_socket.CMSG_LEN(16 * fds.itemsize), _socket.MSG_CMSG_CLOEXEC)",
      "_socket.CMSG_LEN(16 * fds.itemsize), 0)",
      SEC_EXEC + "test_exec_gets_only_0_1_2_of_1000_inherited_descriptors",
      also=(("rootless/instance/join.py", "    for fd in ns.values():\n        os.close(fd)\n", ""),)),
    M("rbox exec leaves the caller's descriptors open: the exec'd command gets them",
      "rootless/instance/join.py", "    seal_fds([])\n", "",
      SEC_EXEC + "test_exec_gets_only_0_1_2_of_1000_inherited_descriptors"),
    M("the supervisor gives the namespaces to a process inside a sandbox",
      "rootless/instance/supervisor.py", "                if refusal is not None:\n", "                if False:\n",
      SEC_EXEC + "test_a_process_inside_a_sandbox_gets_nothing_from_the_supervisors_socket"),
    M("stop never sends SIGKILL: a command that ignores SIGTERM runs on",
      "rootless/instance/supervisor.py", "        self.deadline = None\n        self.kill()\n",
      "        self.deadline = None\n",
      NAMED + "test_a_command_that_ignores_sigterm_is_killed_after_the_grace_time"),
    M("the name of a running sandbox can be taken again",
      "rootless/instance/registry.py", "        if old is not None and old.alive():\n", "        if False:\n",
      NAMED + "test_names_are_checked_and_unique"),
    M("a sandbox whose supervisor was killed counts as alive: ps lists it",
      "rootless/instance/registry.py",
      "            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)\n            return False\n",
      "            return True\n",
      FAULTS + "test_kill_9_of_the_supervisor_takes_the_sandbox_down"),
    M("the detached supervisor keeps the caller's descriptors: $(rbox run -d ...) never returns",
      "rootless/instance/supervisor.py", "        _close_all_but({", "        set({",
      FAULTS + "test_run_d_returns_although_the_caller_holds_its_output_open_elsewhere"),

    # --- daily use (issue #13): rbox behaves like the command it runs
    M("a pty whenever stdin is a terminal: redirected output gets CRLF, stderr merged",
      "rootless/cli.py", "all(os.isatty(fd) for fd in (0, 1, 2))", "os.isatty(0)",
      TDAILY + "test_redirected_output_is_byte_exact_with_a_terminal_on_stdin"),
    M("signals the caller ignored reset to default: nohup does not protect the command",
      "rootless/signals.py", "IGNORED = frozenset(s for s in _PASSED_ON if signal.getsignal(s) == signal.SIG_IGN)",
      "IGNORED: frozenset[int] = frozenset()",
      TDAILY + "test_signals_the_caller_ignored_stay_ignored[nohup]"),
    M("the command leads its own session: Ctrl-Z cannot stop sleep (orphaned process group)",
      "rootless/payload.py", '{"setpgroup": 0, ', '{"setsid": True, ',
      TDAILY + "test_ctrl_z_stops_sleep_and_fg_resumes_it"),
    M("a background rbox makes the terminal raw: it is stopped by SIGTTOU",
      "rootless/console.py", " or not self.in_foreground():", ":",
      TDAILY + "test_a_background_rbox_with_a_pty_leaves_the_terminal_alone"),
    M("Python's locale coercion leaks LC_CTYPE into the command",
      "rootless/cli.py", "    environ = caller_environment()\n", "    environ = dict(os.environ)\n",
      DAILY + "test_rbox_adds_nothing_to_the_environment_but_rbox_sandbox[C]"),

    # --- mounts the host makes after the start (class 8, latemounts.py)
    M("the sandbox's tree a slave of the host's: a later host mount arrives writable",
      "rootless/rootfs.py", "        sc.mount(None, \"/\", None, sc.MS_REC | sc.MS_PRIVATE)\n",
      "        sc.mount(None, \"/\", None, sc.MS_REC | sc.MS_SLAVE)\n",
      SEC + "test_late_mounts.py::test_without_mount_setattr_late_mounts_stay_invisible",
      SEC + "test_late_mounts.py::test_nothing_writable_hides_under_a_shown_mount"),
    M("a late mount shown writable under the read-only root",
      "rootless/latemounts.py", "0 if writable else sc.MOUNT_ATTR_RDONLY", "0",
      SEC + "test_late_mounts.py::test_a_late_mount_under_the_read_only_root_is_shown_read_only",
      SEC + "test_late_mounts.py::test_root_inside_cannot_make_a_late_mount_writable"),
    M("the shown clone stays a slave of the host's mount: host mounts below it arrive writable",
      "rootless/latemounts.py", "sc.MOUNT_ATTR_RDONLY, sc.MS_PRIVATE)", "sc.MOUNT_ATTR_RDONLY, 0)",
      SEC + "test_late_mounts.py::test_nothing_writable_hides_under_a_shown_mount"),

    # --- the image unpacker (rootless/image/unpack.py) and its sandbox (store.py)
    M("a `..` in a member's name climbs out of the target",
      "rootless/image/unpack.py", '    if ".." in found:', "    if False:",
      UNPACK + "[dotdot_name-openat2]", UNPACK + "[dotdot_inside-nofollow]"),
    M("parents opened following symlinks: `x -> ..` then `x/f` writes beside the target",
      "rootless/image/unpack.py", "os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC", "os.O_DIRECTORY | os.O_CLOEXEC",
      UNPACK + "[cross_layer_dotdot-nofollow]", UNPACK + "[cross_layer_dotdot-openat2]"),
    M("a symlinked parent resolved from the host's view, not with the target as `/`",
      "rootless/image/unpack.py", "sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS", "sc.RESOLVE_NO_MAGICLINKS",
      UNPACK + "[cross_layer_dotdot-openat2]", UNPACK + "[whiteout_through_symlink-openat2]"),
    M("a hard link to a symlink is made (it can point anywhere)",
      "rootless/image/unpack.py", "            if not stat.S_ISREG(st.st_mode):", "            if False:",
      UNPACK + "[hardlink_to_symlink-openat2]"),
    M("what is in an entry's place is left there: the file is written through an earlier symlink",
      "rootless/image/unpack.py", "            os.unlink(base, dir_fd=parent)\n", "            pass\n",
      UNPACK + "[symlink_then_file_next_layer-openat2]", UNPACK + "[symlink_then_file_same_name-nofollow]"),
    M("set-user-ID bits kept when everything is flattened to the user",
      "rootless/image/unpack.py", "            mode &= ~(stat.S_ISUID | stat.S_ISGID)\n", "",
      "tests/unit/test_unpack.py::test_setid_stripped_when_flattened"),
    M("device nodes not recognised: each is reported as an unknown entry",
      "rootless/image/unpack.py", "        if m.ischr() or m.isblk():", "        if False:",
      "tests/unit/test_unpack.py::test_devices_skipped_with_one_notice"),
    M("an opaque marker empties its directory of this layer's own entries too",
      "rootless/image/unpack.py", "                if child not in made:", "                if True:",
      "tests/unit/test_unpack.py::test_opaque_directory[marker_last]"),
    M("the unpacking sandbox can write the user's home",
      "rootless/image/store.py", '"--net=none", "-T", "--bind"', '"--net=none", "-T", "--home=rw", "--bind"',
      SEC + "test_image_unpack.py::test_unpacking_sandbox_writes_only_the_target"),
    M("a failed import leaves its half-made tree in the store",
      "rootless/image/command.py", "            store.remove_tree(staging)\n            raise", "            raise",
      "tests/integration/test_image.py::test_oci_blob_with_wrong_digest_is_refused"),
    M("a store on NFS is used (servers refuse files of subordinate ids)",
      "rootless/image/store.py", "        if kind is not None:", "        if False:",
      "tests/integration/test_image.py::test_store_on_a_network_file_system_is_refused"),
    # --- SquashFS: the reader (rootless/image/squash.py) and the export (export.py)
    M("a directory with one name twice: a symlink, then a directory of that name with a file",
      "rootless/image/squash.py", "                if name in seen:", "                if False:",
      SQUASH + "test_crafted_image_is_refused_and_writes_nothing_outside[symlink_then_dir]",
      SEC + "test_image_squash.py::test_crafted_squashfs_import_writes_nothing_outside[symlink_then_dir]"),
    M("names with `..`, `/` or NUL in a SquashFS directory are used",
      "rootless/image/squash.py", '                if name in (b".", b"..") or b"/" in name or b"\\0" in name:',
      "                if False:",
      SQUASH + "test_crafted_image_is_refused_and_writes_nothing_outside[dotdot_dir]",
      SQUASH + "test_crafted_image_is_refused_and_writes_nothing_outside[slash_name]"),
    M("a directory that contains itself is followed without end",
      "rootless/image/squash.py", "            if ino.number in visited:", "            if False:",
      SQUASH + "test_crafted_directory_that_contains_itself"),
    M("a gzip block decompresses past its size (a decompression bomb)",
      "rootless/image/squash.py", "    if d.unconsumed_tail or not d.eof:", "    if False:",
      SQUASH + "test_blocks_are_decompressed_with_a_bound"),
    M("/.rbox/image.json read through a symlink",
      "rootless/image/squash.py", "        if ino is None or ino.kind != FILE:", "        if ino is None:",
      SQUASH + "test_config_through_a_symlink_is_not_read"),
    M("an exported image's config of the wrong types is taken as it is",
      "rootless/image/squash.py", "        if not ok:", "        if False:",
      SQUASH + "test_invalid_config_is_an_error"),
    M("mksquashfs may write the image it exports",
      "rootless/image/export.py", '"--ro-bind", rootfs,', '"--bind", rootfs,',
      SEC + "test_image_squash.py::test_export_sandbox_writes_only_the_output"),
    M("an existing FILE is replaced by an export without --force",
      "rootless/image/export.py", "    if os.path.lexists(dest) and not force:", "    if False:",
      SQUASH_RUN + "test_export_refuses_to_overwrite_unless_forced"),
    M("a FILE made while the export ran is replaced without --force",
      "rootless/image/export.py", "        if not force:\n            _link(fd, named, dest)",
      "        if False:\n            _link(fd, named, dest)",
      SQUASH_RUN + "test_a_file_made_during_the_export_is_not_replaced"),
    M("the export writes a named temporary file, which a kill -9 leaves behind",
      "rootless/image/export.py",
      "            return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o644), None",
      "            raise OSError(errno.EOPNOTSUPP, 'mutated')",
      SQUASH_RUN + "test_killed_export_leaves_no_file_and_no_process"),
    M("a killed import or export leaves its sandbox (and mksquashfs) running",
      "rootless/image/store.py", "            sc.set_pdeathsig(signal.SIGKILL)\n            if os.getppid() != caller:",
      "            if os.getppid() != caller:",
      SQUASH_RUN + "test_killed_export_leaves_no_file_and_no_process"),
    # --- `rbox image pull` (rootless/image/registry.py, client.py, blobs.py, pull.py)
    M("a blob whose bytes do not match its digest is kept in the cache and unpacked",
      "rootless/image/blobs.py", "        if found != digest:", "        if False:",
      PULL + "test_a_changed_blob_is_refused[layer]", PULL + "test_a_changed_blob_is_refused[config]"),
    M("a manifest asked for by its digest is used whatever its bytes",
      "rootless/image/client.py", 'if reference.startswith("sha256:") and digest != reference:', "if False:",
      PULL + "test_a_changed_blob_is_refused[manifest]"),
    M("plain http off this machine without --insecure: tokens and passwords in clear, images swapped on the way",
      "rootless/image/registry.py", 'if scheme == "http" and not insecure and not is_loopback(hostname):',
      "if False:",
      PULL + "test_plain_http_off_this_machine_is_refused_before_connecting[ref-False]",
      PULL + "test_plain_http_off_this_machine_is_refused_before_connecting[redirect-False]",
      PULL + "test_plain_http_off_this_machine_is_refused_before_connecting[realm-False]"),
    M("the registry's token goes to whatever origin a redirect names",
      "rootless/image/client.py", "if origin == self.origin and self._authorization:", "if self._authorization:",
      PULL + "test_a_redirect_elsewhere_gets_no_token"),
    M("a failed pull leaves its half-made tree in the store",
      "rootless/image/pull.py", "        unpacking.abort()\n        _remove(staging)\n        raise",
      "        unpacking.abort()\n        raise",
      PULL + "test_a_changed_blob_is_refused[layer]"),
    M("an image's tmpfs underlay stays writable: the command writes in the image's `/`",
      "rootless/rootfs.py", "    seal_image()            # an image", "    pass            # an image",
      "tests/integration/test_image_run.py::test_read_only_keeps_the_image_read_only_and_unchanged"),
    M("an image's directories bound writable: the command changes the stored image",
      "rootless/mounts.py", "        make_readonly(target, oldroot)", "        pass",
      "tests/integration/test_image_run.py::test_read_only_keeps_the_image_read_only_and_unchanged"),

    # --- inside a Slurm job (slurm.py): the job's end is the sandbox's; its cgroup is not left
    M("PID 1 has no death signal: a cancelled job's sandbox lives on (proctrack/pgid misses it)",
      "rootless/init.py", "    sc.set_pdeathsig(signal.SIGKILL)           #", "    #",
      "tests/slurm/test_scancel.py::test_scancel_leaves_nothing"),
    M("limits inside a job on a node without cgroup v2: the user manager is asked, out of the job",
      "rootless/cgroups.py", "        if job:\n            raise slurm.refusal",
      "        if False:\n            raise slurm.refusal",
      SLURM + "test_limits_are_refused_with_slurms_options"),
    M("limits inside a job whose cgroup is not delegated: a systemd scope takes the sandbox out of the job",
      "rootless/cgroups.py", "    if job:\n        why =", "    if False:\n        why =",
      "tests/unit/test_slurm.py::test_a_job_cgroup_that_is_not_delegated_is_refused"),

    # --- overlays (rootless/overlay.py, fusekeeper.py): the lower layer is never written
    M("the image bound writable instead of overlaid (kernel driver): the command changes the stored image",
      "rootless/overlay.py", '    _mount("overlay", target, "overlay", _flags(layer), options(lower, upper, work),',
      '    _mount(lower, target, None, sc.MS_BIND, None,',
      SEC + "test_overlay_attacks.py::test_writes_in_the_image_never_reach_it[kernel]"),
    M("fuse-overlayfs's upper layer made inside the lower one: the command's writes land in the image",
      "rootless/fusekeeper.py", 'overlay.prepare_upper(f"{base}/rw", f"{base}/lower"',
      'overlay.prepare_upper(f"{base}/lower", f"{base}/lower"',
      SEC + "test_overlay_attacks.py::test_writes_in_the_image_never_reach_it[fuse]"),
    M("--overlay SRC bound read-write instead of overlaid: the host directory changes",
      "rootless/mounts.py", "ops.append(Overlay(next(overlays), spec.overlay_driver, given=m.given))",
      "ops.append(Bind(next(overlays).lower or '', m.dst, ro=False))",
      SEC + "test_overlay_attacks.py::test_writes_under_overlay_never_reach_the_host_directory[kernel]"),
    M("the current directory's bind covers an --overlay above it: writes reach the host directory",
      "rootless/spec.py", 'm.kind in ("--hide", "--ro-bind", "--overlay") and inside(cwd, m.dst)',
      'm.kind in ("--hide", "--ro-bind") and inside(cwd, m.dst)',
      SEC + "test_overlay_attacks.py::test_an_overlay_above_the_current_directory_wins_over_its_bind"),
    # ... the FUSE daemons are out of the command's reach
    M("the FUSE keeper started inside the sandbox's PID namespace (its parent check relaxed to let it run "
      "there): the command sees its daemons and can signal them",
      "rootless/stage1.py", "    keeper = start_fuse(spec)           # before the sandbox's PID namespace: its "
      "daemons stay out of it\n    unshare_rest(spec)\n", "    unshare_rest(spec)\n    keeper = start_fuse(spec)\n",
      SEC + "test_overlay_attacks.py::test_fuse_daemons_are_out_of_the_commands_reach[fuse]",
      also=(("rootless/fusekeeper.py", "    if os.getppid() != stage1:\n        return 1\n    os.setsid()",
             "    os.setsid()"),)),
    M("a FUSE mount without default_permissions: the command reads files through the daemon's capabilities",
      "rootless/fusekeeper.py", '            "default_permissions,allow_other")\n    try:',
      '            "allow_other")\n    try:',
      SEC + "test_overlay_attacks.py::test_the_overlay_checks_the_commands_own_permissions[sqfs-fuse]"),
    M("a FUSE daemon outlives its keeper (no death signal): kill -9 leaves it running",
      "rootless/fusekeeper.py", "    sc.set_pdeathsig(signal.SIGKILL)\n    if os.getppid() != keeper:",
      "    if os.getppid() != keeper:",
      "tests/robustness/test_fuse_death.py::test_kill_9_of_any_of_its_processes_leaves_nothing[keeper]"),
    M("a FUSE daemon's death leaves the sandbox running on a dead file system",
      "rootless/fusekeeper.py", "if self.reap() and self.built:", "if self.reap() and False:",
      "tests/robustness/test_fuse_death.py::test_kill_9_of_any_of_its_processes_leaves_nothing[squashfuse]"),
    M("the FUSE keeper's death leaves the sandbox running on dead file systems",
      "rootless/fusekeeper.py", "        os.kill(self.init_pid, signal.SIGKILL)\n", "        pass\n",
      "tests/robustness/test_fuse_death.py::test_kill_9_of_any_of_its_processes_leaves_nothing[keeper]"),
    # ... the upper layer is discarded (and a kept one is this sandbox's alone)
    M("the discarded upper layer kept on disk (beside the image) instead of a tmpfs: writes outlive the sandbox",
      "rootless/overlay.py", '        _mount("tmpfs", rw, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=0700", f"mount',
      '        _mount(oldroot + os.path.dirname(layer.lower or "/"), rw, None, sc.MS_BIND, None, f"mount',
      "tests/integration/test_overlay.py::test_the_image_is_writable_and_its_writes_are_gone_at_exit[kernel]"),
    M("the FUSE keeper's tmpfs left out: fuse-overlayfs's upper layers land in the host's /tmp",
      "rootless/fusekeeper.py", '    sc.mount("tmpfs", PLACE, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=0700")\n', "",
      "tests/integration/test_overlay.py::test_the_image_is_writable_and_its_writes_are_gone_at_exit[fuse]"),
    M("two sandboxes share one --persist directory (overlayfs forbids a shared upper layer)",
      "rootless/overlay.py", "            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", "            pass",
      "tests/integration/test_overlay.py::test_persist_is_refused_while_another_sandbox_uses_it"),
    M("a --persist directory on NFS is used",
      "rootless/overlay.py", "    if kind is not None:\n        raise SpecError(f\"{option}", "    if False:\n"
      "        raise SpecError(f\"{option}",
      "tests/unit/test_overlay.py::test_a_kept_directory_on_a_network_file_system_is_refused"),
    M("someone else's --persist directory is used (they could read the writes or swap its parts)",
      "rootless/overlay.py", "    if os.path.isdir(full) and os.stat(full).st_uid != os.getuid():",
      "    if False:",
      "tests/integration/test_overlay.py::test_persist_dir_of_another_user_is_refused"),
    # --- --join (instance/group.py): one sandbox per step and node, entered as exec enters
    M("a rank that asks for other mounts, network or image joins the group's sandbox anyway",
      "rootless/instance/group.py", "            if different is not None:\n", "            if False:\n",
      JOIN + "test_ranks_asking_for_different_sandboxes_are_refused"),
    M("a --join rank stays in U1, which owns every mount: none is locked for it",
      "rootless/instance/join.py", '    sc.setns(ns["user2"], sc.CLONE_NEWUSER)\n', "",
      JOIN + "test_ranks_with_the_same_options_run_and_leave_nothing"),
    M("a rank killed before the others arrive leaves them waiting for ever",
      "rootless/instance/group.py", "        if time.monotonic() > deadline:\n            if arrived < count:",
      "        if False:\n            if arrived < count:",
      JOIN + "test_a_rank_killed_while_the_others_wait_fails_them_in_time"),
    M("ranks hold no lock while they run: the sandbox ends under them once all have arrived",
      "rootless/instance/group.py", "            fcntl.flock(members_fd, fcntl.LOCK_SH)\n", "",
      JOIN + "test_srun_ranks_see_each_other_and_their_exit_codes_pass"),
    M("the group's supervisor outlives its killed watcher: the sandbox is left running",
      "rootless/instance/group.py", "            sc.set_pdeathsig(signal.SIGKILL)\n", "",
      JOIN + "test_the_watcher_killed_ends_the_sandbox_and_the_ranks_say_so"),
]

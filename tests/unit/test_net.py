"""Network planning as pure functions: feature detection on saved --help texts of several
slirp4netns versions, command lines, -p parsing, the sandbox's resolv.conf and hosts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rootless import net
from rootless.errors import HostSetupError, SpecError
from rootless.net import pasta, ports, slirp

DATA = Path(__file__).resolve().parents[1] / "data"


def features(version: str) -> frozenset[str]:
    return slirp.detect_features((DATA / f"slirp4netns-{version}.help").read_text())


def test_detect_features_of_1_2_0() -> None:
    assert features("1.2.0") >= {"--configure", "--ready-fd", "--exit-fd", "--mtu", "--api-socket",
                                 "--disable-host-loopback", "--enable-sandbox", "--enable-seccomp",
                                 "--disable-dns"}


def test_detect_features_of_0_4_has_sandbox_but_not_disable_dns() -> None:
    f = features("0.4")
    assert {"--enable-sandbox", "--enable-seccomp", "--api-socket"} <= f
    assert "--disable-dns" not in f


def test_detect_features_of_0_2_lacks_the_isolation_options() -> None:
    f = features("0.2")
    assert {"--configure", "--ready-fd", "--exit-fd", "--mtu"} <= f
    assert not f & {"--disable-host-loopback", "--api-socket", "--enable-sandbox", "--enable-seccomp"}


def test_argv_with_every_feature() -> None:
    argv = slirp.build_argv("/usr/bin/slirp4netns", features("1.2.0"), 42, False, None)
    assert argv == ["/usr/bin/slirp4netns", "--configure", "--mtu=65520", "--ready-fd=3", "--exit-fd=4",
                    "--disable-host-loopback", "--enable-sandbox", "--enable-seccomp", "42", "tap0"]


def test_argv_with_host_loopback_allowed_and_an_api_socket() -> None:
    argv = slirp.build_argv("s", features("1.2.0"), 42, True, "/run/x/api.sock")
    assert "--disable-host-loopback" not in argv
    assert "--api-socket=/run/x/api.sock" in argv


def test_argv_leaves_out_what_the_version_lacks() -> None:
    argv = slirp.build_argv("s", features("0.2") | {"--disable-host-loopback"}, 1, False, None)
    assert "--enable-sandbox" not in argv and "--enable-seccomp" not in argv


def test_old_slirp4netns_is_refused_rather_than_opening_the_host_loopback() -> None:
    with pytest.raises(HostSetupError, match="lacks --disable-host-loopback"):
        slirp.check_features(features("0.2"), allow_host_loopback=False, publish=False)
    slirp.check_features(features("0.2"), allow_host_loopback=True, publish=False)
    with pytest.raises(HostSetupError, match="--api-socket"):
        slirp.check_features(features("0.2"), allow_host_loopback=True, publish=True)
    slirp.check_features(features("0.4"), allow_host_loopback=False, publish=True)


@pytest.mark.needs_unprivileged
def test_tun_device_that_we_cannot_open_is_explained(tmp_path) -> None:
    device = tmp_path / "tun"
    device.write_text("")
    device.chmod(0o600)
    slirp.check_tun(str(device))
    device.chmod(0)
    assert not os.access(device, os.R_OK)
    with pytest.raises(HostSetupError) as info:
        slirp.check_tun(str(device))
    assert "permission denied (it is not mode 0666)" in info.value.message
    assert f"chmod 0666 {device}" in (info.value.hint or "")


def test_missing_slirp4netns_names_the_package(tmp_path) -> None:
    with pytest.raises(HostSetupError) as info:
        slirp.preflight(str(tmp_path))
    assert info.value.message == "slirp4netns is not installed (Debian package `slirp4netns`)"
    assert "--net=none" in (info.value.hint or "")


def test_missing_pasta_names_the_package(tmp_path) -> None:
    with pytest.raises(HostSetupError, match="Debian package `passt`"):
        pasta.preflight(str(tmp_path))


@pytest.mark.parametrize(("spec", "expected"), [
    ("8080:80", "127.0.0.1:8080->80/tcp"),
    ("0.0.0.0:8080:80", "0.0.0.0:8080->80/tcp"),
    ("5353:53/udp", "127.0.0.1:5353->53/udp"),
    (":8080:80/tcp", "127.0.0.1:8080->80/tcp"),
])
def test_publish_specs(spec: str, expected: str) -> None:
    assert repr(ports.parse(spec)) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("80", "invalid -p 80"),
    ("1:2:3:4", "invalid -p 1:2:3:4"),
    ("8080:80/sctp", "invalid protocol `sctp` in -p 8080:80/sctp"),
    ("0:80", "invalid port `0` in -p 0:80"),
    ("8080:70000", "invalid port `70000` in -p 8080:70000"),
    ("::1:8080:80", "invalid -p ::1:8080:80"),
    ("localhost:8080:80", "invalid host address `localhost` in -p localhost:8080:80"),
])
def test_bad_publish_specs(spec: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        ports.parse(spec)
    assert info.value.message == message


def test_the_same_host_port_twice_is_refused() -> None:
    with pytest.raises(SpecError, match="published twice"):
        ports.check_unique([ports.parse("8080:80"), ports.parse("127.0.0.1:8080:81")])
    ports.check_unique([ports.parse("8080:80"), ports.parse("8080:80/udp")])


def test_pasta_argv() -> None:
    argv = pasta.build_argv("/usr/bin/pasta", 42, False, [ports.parse("8080:80"), ports.parse("53:53/udp")],
                            "/run/p/pid")
    assert argv[argv.index("--tcp-ports") + 1] == "127.0.0.1/8080:80"
    assert argv[argv.index("--udp-ports") + 1] == "127.0.0.1/53:53"
    # Never forward the host's ports into the sandbox; the gateway is not the host.
    assert argv[argv.index("--tcp-ns") + 1] == "none" and argv[argv.index("--udp-ns") + 1] == "none"
    assert "--no-map-gw" in argv and argv[-1] == "42"
    assert "--no-map-gw" not in pasta.build_argv("p", 1, True, [], "x")
    assert pasta.port_spec([], "tcp") == "none"


def test_resolv_conf_points_at_the_forwarder_and_keeps_search_and_options() -> None:
    host = "nameserver 127.0.0.53\nsearch cluster.example\noptions edns0 trust-ad\n# comment\n"
    assert net.resolv_conf(host) == "nameserver 10.0.2.3\nsearch cluster.example\noptions edns0 trust-ad\n"


@pytest.mark.parametrize(("mode", "address"), [("slirp4netns", "10.0.2.100"), ("pasta", "10.0.2.100"),
                                               ("none", "127.0.1.1")])
def test_hosts_keeps_the_hosts_entries_and_names_the_sandbox(mode: str, address: str) -> None:
    host = "127.0.0.1 localhost\n10.1.0.5 node5"
    assert net.hosts(host, "box", mode) == f"127.0.0.1 localhost\n10.1.0.5 node5\n{address}\tbox\n"


def test_mount_plan_writes_resolv_conf_only_where_a_helper_serves_dns(tmp_path) -> None:
    from rootless import mounts
    from tests.unit.test_spec import make

    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n")
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.53\n")
    slirp_ops = mounts._network_files(make(["run", "x"]), etc=str(tmp_path))
    assert [op.dst for op in slirp_ops] == ["/etc/hosts", "/etc/resolv.conf"]
    assert [op.dst for op in mounts._network_files(make(["run", "--net=none", "x"]), str(tmp_path))] == ["/etc/hosts"]
    assert [op.dst for op in mounts._network_files(make(["run", "--net=host", "x"]), str(tmp_path))] == ["/etc/hosts"]


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--net=none", "-p", "8080:80", "x"], "-p/--publish needs --net=slirp4netns or --net=pasta"),
    (["run", "--net=host", "--allow-host-loopback", "x"], "--allow-host-loopback needs --net=slirp4netns"),
])
def test_network_option_rules(argv: list[str], message: str) -> None:
    from tests.unit.test_spec import make

    with pytest.raises(SpecError, match=message):
        make(argv)

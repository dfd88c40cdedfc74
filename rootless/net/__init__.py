"""Network modes and the facts every driver shares.

Runs in: parent (planning, `Driver`s) and init (`configure`).

- slirp4netns (default): a new network namespace with `tap0` 10.0.2.100/24, gateway
  10.0.2.2, DNS 10.0.2.3, served by a slirp4netns process outside (net/slirp.py).
- pasta: the same addresses through passt's pasta (net/pasta.py), a faster alternative.
- none: a new network namespace with only `lo`, up.
- host: the host's network namespace, shared.

Drivers are split like rootlesskit's ParentDriver/ChildDriver: the parent half starts
the helper against PID 1's namespaces and stops it; the child half (`configure`) runs in
init. For slirp4netns and pasta the helper configures the interface itself.
"""

from __future__ import annotations

NET_MODES = ("slirp4netns", "pasta", "none", "host")
DEFAULT_MODE = "slirp4netns"
GUEST_IP = "10.0.2.100"
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
PREFIX = 24
MTU = 65520          # rootlesskit's default too: 9x the throughput of 1500 (slirp4netns README)
TAP = "tap0"


def configure(mode: str) -> None:
    """init's half: `lo` up in every new network namespace (slirp4netns brings it up too
    since v0.4.0, older ones and pasta may not)."""
    if mode != "host":
        from rootless.net import loopback  # imported before pivot_root by init.py

        loopback.up()


def uses_helper(mode: str) -> bool:
    return mode in ("slirp4netns", "pasta")


def resolv_conf(host_text: str) -> str:
    """The sandbox's resolv.conf: the helper's DNS forwarder, and the host's search and
    options lines (short host names on a cluster keep resolving). The host's nameserver
    lines are dropped: a loopback stub like 127.0.0.53 is unreachable from a new network
    namespace (buildah#3424, podman#3305); the forwarder reaches it from outside."""
    kept = [line for line in host_text.splitlines() if line.split()[:1] in (["search"], ["domain"], ["options"])]
    return "".join(line + "\n" for line in [f"nameserver {DNS}", *kept])


def hosts(host_text: str, hostname: str, mode: str) -> str:
    """The host's /etc/hosts (cluster node names stay) plus the sandbox's own name."""
    address = GUEST_IP if uses_helper(mode) else "127.0.1.1"
    text = host_text if host_text.endswith("\n") or not host_text else host_text + "\n"
    return text + f"{address}\t{hostname}\n"

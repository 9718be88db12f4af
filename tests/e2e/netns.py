"""Test hosts on this machine: network namespaces joined to the host by veth pairs (root only).

Each host gets 10.213.<n>.2/24 inside its namespace and 10.213.<n>.1 on the host side of its veth: the
addresses exist only between this test and namespaces it made, and everything is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


def available() -> str | None:
    """None when namespaces can be made here; otherwise why not."""
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class TestHost:
    name: str       # namespace name
    address: str    # inside the namespace
    gateway: str    # the host side of the veth: how the namespace reaches the test's own servers

    def command(self, *argv: str) -> list[str]:
        """argv run inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


@contextlib.contextmanager
def test_hosts(count: int, tag: str) -> Iterator[list[TestHost]]:
    hosts: list[TestHost] = []
    links: list[str] = []
    try:
        for n in range(1, count + 1):
            ns, veth = f"sw{tag}h{n}", f"sw{tag}v{n}"
            _ip("netns", "add", ns)
            hosts.append(TestHost(ns, f"10.213.{n}.2", f"10.213.{n}.1"))
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            links.append(veth)
            _ip("addr", "add", f"10.213.{n}.1/24", "dev", veth)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "addr", "add", f"10.213.{n}.2/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "default", "via", f"10.213.{n}.1")
        yield hosts
    finally:
        for veth in links:
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                _ip("link", "del", veth)
        for host in hosts:
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                _ip("netns", "del", host.name)

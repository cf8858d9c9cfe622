"""Two "hosts" on one machine: Linux network namespaces joined by a veth pair, and a UDP-only Fast DDS
profile for them.

:class:`VethPair` makes two namespaces (``ip netns add``) on a private test subnet it owns (default
10.231.7.1/24 and 10.231.7.2/24; nothing else is routed, no other address is ever contacted) and
removes them on :meth:`VethPair.close` (also after a failure). :func:`udp_profile` writes a Fast DDS
profile with UDPv4 as the only transport (processes in different network namespaces share
/dev/shm, and Fast DDS would otherwise use shared memory between them) and the two addresses as
initial peers (unicast discovery: multicast across the pair is not relied on).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence

SUBNET = "10.231.7"


def _ip(*args: str, ns: str = "") -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20)


def can_create_namespaces() -> str:
    """'' when this process can create network namespaces, else the reason it cannot."""
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN)"
    from shutil import which
    if which("ip") is None:
        return "iproute2's `ip` is not installed"
    name = f"fdprobe{os.getpid()}"
    r = _ip("ip", "netns", "add", name)
    if r.returncode != 0:
        return f"`ip netns add` failed: {r.stderr.strip()}"
    _ip("ip", "netns", "del", name)
    return ""


@dataclass
class VethPair:
    """Namespaces ``ns[0]``, ``ns[1]`` with addresses ``addr[0]``, ``addr[1]`` on a veth pair."""

    tag: str = field(default_factory=lambda: str(os.getpid()))
    subnet: str = SUBNET
    ns: List[str] = field(default_factory=list)
    addr: List[str] = field(default_factory=list)
    dev: List[str] = field(default_factory=list)

    def __post_init__(self):
        self.ns = [f"fdA{self.tag}", f"fdB{self.tag}"]
        self.addr = [f"{self.subnet}.1", f"{self.subnet}.2"]
        self.dev = ["fdvethA", "fdvethB"]  # names inside the namespaces only

    @staticmethod
    def remove_stale() -> List[str]:
        """Delete pairs left by a test process that died before its clean-up (``fdA<pid>``/``fdB<pid>``
        whose process is gone); returns their names."""
        import re
        gone = []
        for line in _ip("ip", "netns", "list").stdout.splitlines():
            m = re.match(r"(fd[AB](\d+))\b", line.strip())
            if m and not Path(f"/proc/{m.group(2)}").exists():
                _ip("ip", "netns", "del", m.group(1))
                gone.append(m.group(1))
        return gone

    def create(self) -> "VethPair":
        self.remove_stale()
        try:
            for ns in self.ns:
                self._check(_ip("ip", "netns", "add", ns))
            # Both ends are created straight inside their namespaces: nothing appears in the root one.
            self._check(_ip("ip", "link", "add", self.dev[0], "netns", self.ns[0], "type", "veth", "peer",
                            "name",
                            self.dev[1], "netns", self.ns[1]))
            for ns, dev, addr in zip(self.ns, self.dev, self.addr):
                self._check(_ip("ip", "link", "set", "lo", "up", ns=ns))
                self._check(_ip("ip", "addr", "add", f"{addr}/24", "dev", dev, ns=ns))
                self._check(_ip("ip", "link", "set", dev, "up", ns=ns))
                # Socket buffers are per namespace (defaults ~208 kB): room for a few fragmented
                # images per socket, as on a host tuned for ROS 2 over UDP.
                for key in ("net.core.rmem_max", "net.core.wmem_max"):
                    _ip("sysctl", "-w", f"{key}={32 * 1024 * 1024}", ns=ns)
        except Exception:
            self.close()
            raise
        return self

    @staticmethod
    def _check(r: subprocess.CompletedProcess) -> None:
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(r.args)}: {r.stderr.strip()}")

    def prefix(self, i: int) -> List[str]:
        """Command prefix that runs a command in namespace ``i``."""
        return ["ip", "netns", "exec", self.ns[i]]

    def bytes_received(self, i: int) -> int:
        """Bytes received so far on namespace ``i``'s end of the pair."""
        r = _ip("cat", f"/sys/class/net/{self.dev[i]}/statistics/rx_bytes", ns=self.ns[i])
        return int(r.stdout.strip() or 0)

    def reaches(self, i: int) -> bool:
        """A UDP datagram sent from namespace ``i`` to the other end arrives there (its rx counter
        grows; no ping needed: iputils may not be installed)."""
        import sys
        import time
        before = self.bytes_received(1 - i)
        send = (f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                f"[s.sendto(b'facediff', ('{self.addr[1 - i]}', 9)) for _ in range(3)]")
        _ip(sys.executable, "-c", send, ns=self.ns[i])
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            if self.bytes_received(1 - i) > before:
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        for ns in self.ns:
            _ip("ip", "netns", "del", ns)  # deletes the veth end inside it too

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.close()


def udp_profile(path: Path, peers: Sequence[str], buffer_bytes: int = 16 * 1024 * 1024) -> Path:
    """Write a Fast DDS profile at ``path``: UDPv4 only (no shared memory), ``peers`` as initial peers.

    The same file serves both sides (a participant's own address in the list is harmless).
    """
    pad = " " * 14
    locators = "\n".join(f"{pad}<locator><udpv4><address>{a}</address></udpv4></locator>" for a in peers)
    path.write_text(f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- facediff_ros across two hosts: UDPv4 only, unicast discovery through initial peers. -->
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>facediff_udp_only</transport_id>
        <type>UDPv4</type>
        <sendBufferSize>{buffer_bytes}</sendBufferSize>
        <receiveBufferSize>{buffer_bytes}</receiveBufferSize>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="facediff_two_hosts" is_default_profile="true">
      <rtps>
        <builtin>
          <discovery_config>
            <leaseAnnouncement><sec>0</sec><nanosec>500000000</nanosec></leaseAnnouncement>
          </discovery_config>
          <initialPeersList>
{locators}
          </initialPeersList>
        </builtin>
        <useBuiltinTransports>false</useBuiltinTransports>
        <userTransports>
          <transport_id>facediff_udp_only</transport_id>
        </userTransports>
      </rtps>
    </participant>
  </profiles>
</dds>
""")
    return path

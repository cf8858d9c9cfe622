"""The graph split over two "hosts": capture + landmarks in one network namespace, fitting + editor
in another, joined by a veth pair on a private subnet this test makes (10.231.7.1 and .2; nothing
else is routed or contacted), Fast DDS over UDPv4 only (unicast discovery through initial peers).
A listener in the second namespace must receive /avatar/points, and the camera images must have
crossed the veth pair (its byte counter), not shared memory.
Skipped, with the reason, where namespaces cannot be created (not root, no iproute2).
"""

import json
import os
import sys
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from facediff_ros.reliability.two_hosts import VethPair, can_create_namespaces, udp_profile  # noqa: E402
from facediff_ros.reliability.watch import NodeProcesses  # noqa: E402
from waiting import wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "facediff_ros" / "data" / "sample.db3"
REASON = can_create_namespaces() if sys.platform.startswith("linux") else "network namespaces are Linux only"


@pytest.mark.skipif(bool(REASON), reason=REASON or "-")
@pytest.mark.skipif(not SAMPLE.is_file(), reason="the embedded sample recording is not installed")
def test_graph_across_two_network_namespaces(tmp_path):
    pair = VethPair()
    pair.create()
    try:
        assert pair.reaches(0) and pair.reaches(1), "the veth pair does not carry packets"
        profile = udp_profile(tmp_path / "fastdds_udp.xml", pair.addr)
        env = dict(os.environ, FASTDDS_DEFAULT_PROFILES_FILE=str(profile))
        env.pop("RMW_FASTRTPS_USE_QOS_FROM_XML", None)
        g = NodeProcesses(tmp_path / "logs", cwd=str(ROOT), env=env)
        rx0 = pair.bytes_received(1)
        try:
            g.start("capture", prefix=pair.prefix(0))
            g.start("landmarks", prefix=pair.prefix(0))
            g.start("fitting", prefix=pair.prefix(1))
            g.start("editor", prefix=pair.prefix(1))
            out = tmp_path / "listen.json"
            g.start_command("listen", pair.prefix(1) + [
                sys.executable, "-m", "facediff_ros.reliability.listen", "--topic", "/avatar/points",
                "--count", "3",
                "--timeout", "150", "--json", str(out)])
            listen = g.nodes["listen"].proc
            assert wait_for(lambda: listen.poll() is not None or not all(
                a for n, a in g.alive().items() if n != "listen"), timeout=180.0, poll_s=0.5), g.tail()
            assert listen.poll() == 0, g.tail()
            report = json.loads(out.read_text())
            rx = pair.bytes_received(1) - rx0
            # What crosses per second while the graph runs (the capture node publishes at 30 Hz).
            t_a, b_a = time.monotonic(), pair.bytes_received(1)
            time.sleep(5.0)
            rate = (pair.bytes_received(1) - b_a) / (time.monotonic() - t_a)
            print(f"A -> B while running: {rate / 1e6:.1f} MB/s = {rate / 30 / 1e3:.0f} kB per 30 Hz frame "
                  f"(424x240 colour {424 * 240 * 3 / 1e3:.0f} kB + depth {424 * 240 * 2 / 1e3:.0f} kB "
                  f"per copy)")
            print(f"two namespaces: {report['received']} clouds in ns B, first after "
                  f"{report['first_arrival_s']:.1f} s, "
                  f"{report['bytes'][0] / 1e6:.2f} MB each, latency {report['latency_s']}; veth B received "
                  f"{rx / 1e6:.1f} MB")
            assert report["received"] >= 3 and report["frame_ids"] == ["camera_color_optical_frame"]
            # The sample's colour + depth are ~0.5 MB a frame: many MB crossed the pair, not just discovery.
            assert rx > 20e6, rx
            assert all(g.alive()[n] for n in ("capture", "landmarks", "fitting", "editor")), g.tail()
        finally:
            g.stop()
    finally:
        pair.close()
    listing = os.popen("ip netns list").read()
    assert pair.ns[0] not in listing and pair.ns[1] not in listing

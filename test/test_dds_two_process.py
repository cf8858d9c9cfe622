"""Two real processes over Fast DDS: custom messages and a 640x480 XYZRGB cloud, sensor-data QoS."""

import json
import subprocess
import sys
from pathlib import Path

PEER = Path(__file__).with_name("dds_peer.py")


def test_custom_messages_and_large_cloud_cross_processes_intact():
    pub = subprocess.Popen([sys.executable, str(PEER), "pub"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    try:
        sub = subprocess.run([sys.executable, str(PEER), "sub"], capture_output=True, text=True, timeout=90)
    finally:
        pub.terminate()  # SIGTERM: rclpy shuts down cleanly and Fast DDS frees its SHM segment
        try:
            pub.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pub.kill()
            pub.wait()
    assert pub.returncode == 0, f"publisher failed:\n{pub.stderr.read()[-2000:]}"
    assert sub.stdout.strip(), f"subscriber printed nothing; stderr:\n{sub.stderr[-2000:]}"
    result = json.loads(sub.stdout.strip().splitlines()[-1])
    assert result["missing"] == [], f"never received: {result['missing']}"
    assert result["errors"] == [], f"received but different: {result['errors']}"
    assert sub.returncode == 0

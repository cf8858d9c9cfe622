"""play_recording with a reader slower than the file (unpaced): every frame, bit-exact, no deadlock.

Run in a child process with a timeout: the old reader (an rs.frame_queue of 64 frames given to
sensor.start) deadlocked here with a librealsense thread holding the GIL, which would hang pytest.
"""
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from facediff_ros.synthetic.actor import ActorConfig, SyntheticActor
    from facediff_ros.synthetic.recording import play_recording, write_recording
    n = 90  # more than the 64 frames the old queue held
    actor = SyntheticActor(ActorConfig(seed=5, num_frames=n, width=160, height=120))
    rec, _ = write_recording(sys.argv[1], actor)
    got = 0
    for i, p in enumerate(play_recording(rec)):
        f = actor.frame(i)
        assert np.array_equal(p.color, f.color) and np.array_equal(p.depth_mm, f.depth), i
        assert abs(p.timestamp - f.timestamp) < 1e-6, i
        time.sleep(0.03)  # slower than the file plays unpaced
        got += 1
    assert got == n, got
    # A reader that stops early releases the playback (its sensors stop).
    for i, p in enumerate(play_recording(rec)):
        time.sleep(0.03)
        if i == 20:
            break
    print("ok", got)
""")


def test_slow_reader_gets_every_frame_bit_exact(tmp_path):
    pytest.importorskip("pyrealsense2")
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "slow.db3")],
                             capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("play_recording stalled with a slow reader (deadlock)")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "ok 90" in out.stdout

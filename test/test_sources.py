"""Frame sources: recordings of core.recording play back frame-exact, end and loop; errors are typed."""

import numpy as np
import pytest

from facediff_ros.core.capture import sources
from facediff_ros.synthetic import actor_source

pytest.importorskip("pyrealsense2")


@pytest.fixture(scope="module")
def small_recording(tmp_path_factory):
    from facediff_ros.synthetic.actor import ActorConfig, SyntheticActor
    from facediff_ros.synthetic.recording import write_recording
    actor = SyntheticActor(ActorConfig(num_frames=6, width=96, height=72, seed=3, texture_size=128))
    path, _ = write_recording(tmp_path_factory.mktemp("rec") / "small.db3", actor)
    return path, [actor.frame(i) for i in range(6)]


def _read_all(source, limit=100):
    out = []
    try:
        for _ in range(limit):
            out.append(source.read())
    except sources.SourceEnded:
        pass
    return out


def test_recording_plays_every_frame_once_bit_exact_then_ends(small_recording):
    path, truth = small_recording
    src = sources.RecordingSource(sources.RecordingConfig(str(path), loop=False, realtime=False))
    src.open()
    try:
        frames = _read_all(src)
    finally:
        src.close()
    # The first frames may still be lost while the pipeline starts (the source rewinds the file
    # once the pipeline's sensors listen, which makes that rarer, not impossible: ~1 start in 10
    # here loses one or two); every later frame comes once, in order, to the end.
    numbers = [f.frame_number for f in frames]
    assert numbers == list(range(numbers[0], 6)) and len(numbers) >= 4
    for f in frames:
        t = truth[f.frame_number]
        np.testing.assert_array_equal(f.color, t.color)
        np.testing.assert_array_equal(f.depth, t.depth)  # registered depth: no rs.align resampling
        np.testing.assert_allclose(f.intrinsics.K, t.intrinsics.K, rtol=1e-6)  # librealsense: float32
        assert f.intrinsics.shape == t.intrinsics.shape
        assert f.stamp == pytest.approx(t.timestamp, abs=1e-6)
        assert f.depth_scale == pytest.approx(0.001)


def test_recording_loops_when_asked(small_recording):
    path, _ = small_recording
    src = sources.RecordingSource(sources.RecordingConfig(str(path), loop=True, realtime=False))
    src.open()
    try:
        numbers = [src.read().frame_number for _ in range(20)]
    finally:
        src.close()
    # Passes split where the numbers fall back. Within a pass every frame comes once, in order;
    # like a start, a wrap may lose the first frames of the next pass (librealsense's pipeline,
    # ~1 run in 10 here), never a frame in the middle.
    passes, current = [], [numbers[0]]
    for n in numbers[1:]:
        if n <= current[-1]:
            passes.append(current)
            current = []
        current.append(n)
    assert len(passes) >= 2, numbers  # it wrapped at least twice (20 reads of a 6-frame file)
    for p in passes:
        assert p == list(range(p[0], 6)) and p[0] <= 2, numbers
    assert current == list(range(current[0], current[0] + len(current))), numbers


def test_forced_alignment_keeps_geometry(small_recording):
    path, truth = small_recording
    config = sources.RecordingConfig(str(path), loop=False, realtime=False, force_align=True)
    src = sources.RecordingSource(config)
    src.open()
    try:
        f = src.read()
    finally:
        src.close()
    t = truth[f.frame_number].depth
    assert f.depth.shape == t.shape
    # rs.align resamples (each depth pixel splatted onto the colour pixels it covers): same
    # geometry up to a pixel's shift and some holes, not the same bits.
    both = (f.depth > 0) & (t > 0)
    assert both.mean() > 0.5
    assert np.median(np.abs(f.depth[both].astype(int) - t[both]) / t[both]) < 0.02


def test_missing_file_and_missing_camera_raise_source_unavailable(tmp_path):
    with pytest.raises(sources.SourceUnavailable, match="not found"):
        sources.RecordingSource(sources.RecordingConfig(str(tmp_path / "nope.db3"))).open()
    import pyrealsense2 as rs
    if len(rs.context().query_devices()) == 0:
        with pytest.raises(sources.SourceUnavailable, match="no RealSense"):
            sources.RealSenseSource().open()
    with pytest.raises(sources.SourceUnavailable):
        sources.RecordingSource(sources.RecordingConfig(str(tmp_path / "nope.db3"))).read()


def test_synthetic_source_matches_the_actor_and_ends():
    from facediff_ros.synthetic.actor import ActorConfig, SyntheticActor
    config = ActorConfig(num_frames=2, width=64, height=48, seed=5, texture_size=128)
    src = actor_source.SyntheticSource(config, loop=False, realtime=False)
    src.open()
    frames = _read_all(src)
    src.close()
    truth = SyntheticActor(config).frame(1)
    assert [f.frame_number for f in frames] == [0, 1]
    np.testing.assert_array_equal(frames[1].color, truth.color)
    np.testing.assert_array_equal(frames[1].depth, truth.depth)


def test_realtime_playback_follows_the_recorded_frame_rate_across_loops(small_recording):
    """Paced by the frames' stamps (30 Hz here), not by how fast the file was written (faster)."""
    import time
    path, frames = small_recording
    src = sources.RecordingSource(sources.RecordingConfig(str(path), loop=True, realtime=True))
    src.open()
    try:
        first = src.read()
        start = time.monotonic()
        stamps = [src.read().stamp for _ in range(3 * len(frames))]  # three passes over the loop
        elapsed = time.monotonic() - start
    finally:
        src.close()
    assert stamps.count(first.stamp) >= 2  # it did loop
    period = 1.0 / 30
    # Sleeping can only make it slower: the lower bound is strict, the upper one leaves room for load.
    assert len(stamps) * period * 0.97 <= elapsed <= len(stamps) * period * 1.5


def test_a_stream_that_stops_is_a_timeout_not_a_hang():
    """Sets with colour only keep arriving: read() must still give up after timeout_ms."""
    import time

    class _ColourOnly:
        def try_wait_for_frames(self, ms):
            time.sleep(0.01)
            return True, self

        def get_color_frame(self):
            return object()

        def get_depth_frame(self):
            return None

    src = sources.RecordingSource(sources.RecordingConfig("unused.db3", timeout_ms=300))
    src._pipeline = _ColourOnly()
    start = time.monotonic()
    with pytest.raises(sources.SourceTimeout):
        src.read()
    assert time.monotonic() - start < 2.0

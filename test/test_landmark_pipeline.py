"""The landmark pipeline (core/landmarks/pipeline.py) without ROS: what is refused, and why, before
any library sees it; a rendered face end to end; the face mesh's output decoding."""

import numpy as np
import pytest

from facediff_ros.core import images
from facediff_ros.core.camera import Intrinsics
from facediff_ros.core.landmarks import pipeline
from facediff_ros.core.landmarks.lifting import LiftingConfig
from facediff_ros.core.landmarks.pipeline import FrameDropped, LandmarkPipeline, PipelineConfig

INTR = Intrinsics.from_fov(64, 48, 69.0)


def _fields(intr=INTR, depth=None, depth_encoding="16UC1"):
    color = images.ImageFields.from_array(np.full(intr.shape + (3,), 100, np.uint8), "rgb8")
    if depth is None:
        depth = np.full(intr.shape, 600, np.uint16)
    return (color, images.ImageFields.from_array(depth, depth_encoding),
            images.CameraInfoFields(**{k: v for k, v in images.intrinsics_to_camera_info_fields(intr).items()
                                       if k in ("height", "width", "k")}))


def _drop_reason(*args, **kwargs):
    with pytest.raises(FrameDropped) as info:
        pipeline.decode(*args, **kwargs)
    assert info.value.reason in pipeline.DROP_REASONS
    return info.value.reason, str(info.value)


def test_a_good_frame_set_decodes_to_views_in_the_images_own_units():
    color, depth, info = _fields()
    rgb, d, intr = pipeline.decode(color, depth, info)
    assert rgb.shape == (48, 64, 3) and d.dtype == np.uint16 and d[0, 0] == 600
    assert intr == INTR
    assert np.shares_memory(rgb, np.frombuffer(color.data, np.uint8))  # no copy of the pixels


@pytest.mark.parametrize("which", ["color", "depth"])
@pytest.mark.parametrize("h, w", [(1, 32767), (32767, 1), (1, images.MAX_IMAGE_SIDE_PX + 1)])
def test_oversized_images_are_dropped_on_their_declared_size_before_anything_reads_them(which, h, w):
    color, depth, info = _fields()
    # Declared size only: the data is empty, so reading it would be a different drop (bad_*).
    fake = images.ImageFields(h, w, "rgb8" if which == "color" else "16UC1", False,
                              w * (3 if which == "color" else 2), b"")
    args = (fake, depth, info) if which == "color" else (color, fake, info)
    reason, text = _drop_reason(*args)
    assert reason == "image_too_large" and f"{w}x{h}" in text


@pytest.mark.parametrize("k, match", [
    ([1e-310, 0, 31.5, 0, 44.0, 23.5, 0, 0, 1], "focal"),
    ([5e-324, 0, 31.5, 0, 44.0, 23.5, 0, 0, 1], "focal"),
    ([1e-300, 0, 31.5, 0, 44.0, 23.5, 0, 0, 1], "focal"),
    ([44.0, 0, 1e12, 0, 44.0, 23.5, 0, 0, 1], "principal"),
    ([44.0, 2.0, 31.5, 0, 44.0, 23.5, 0, 0, 1], "skew"),
    ([44.0, 0, 31.5, 0, 44.0, 23.5, 0, 0, 2], "last row"),
    ([0.0] * 9, "focal"),
    ([44.0, 0, float("nan"), 0, 44.0, 23.5, 0, 0, 1], "finite"),
])
def test_implausible_camera_info_is_bad_camera_info(k, match):
    color, depth, _ = _fields()
    reason, text = _drop_reason(color, depth, images.CameraInfoFields(48, 64, k))
    assert reason == "bad_camera_info" and match in text


def test_encodings_sizes_and_empty_depth_are_refused_with_their_reason():
    color, depth, info = _fields()
    assert _drop_reason(images.ImageFields.from_array(np.zeros((48, 64), np.uint16), "16UC1"),
                        depth, info)[0] == "bad_color"
    assert _drop_reason(color, images.ImageFields.from_array(np.zeros((48, 64), np.uint8), "mono8"),
                        info)[0] == "bad_depth"
    assert _drop_reason(color, depth, images.CameraInfoFields(24, 32, info.k))[0] == "size_mismatch"
    small = images.ImageFields.from_array(np.full((24, 32), 600, np.uint16), "16UC1")
    assert _drop_reason(color, small, info)[0] == "size_mismatch"
    assert _drop_reason(color, depth, info, depth_info_size=(32, 24))[0] == "size_mismatch"
    pipeline.decode(color, depth, info, depth_info_size=(64, 48))  # matching: fine
    for d, enc in ((np.zeros((48, 64), np.uint16), "16UC1"),
                   (np.full((48, 64), np.nan, np.float32), "32FC1"),
                   (np.full((48, 64), -1.0, np.float32), "32FC1")):
        assert _drop_reason(*_fields(depth=d, depth_encoding=enc))[0] == "empty_depth"


def test_depth_has_samples_distinguishes_none_out_of_range_and_usable():
    cfg = LiftingConfig()  # 0.1 .. 5 m
    assert pipeline.depth_has_samples(np.zeros((4, 4), np.uint16), cfg) is None
    assert pipeline.depth_has_samples(np.full((4, 4), 65535, np.uint16), cfg) is False
    assert pipeline.depth_has_samples(np.full((4, 4), 99, np.uint16), cfg) is False     # 99 mm < 0.1 m
    d = np.full((4, 4), 65535, np.uint16)
    d[2, 3] = 5000                                                                       # exactly 5 m
    assert pipeline.depth_has_samples(d, cfg) is True
    assert pipeline.depth_has_samples(np.full((4, 4), np.nan, np.float32), cfg) is None
    assert pipeline.depth_has_samples(np.full((4, 4), 7.0, np.float32), cfg) is False
    assert pipeline.depth_has_samples(np.array([[np.nan, 0.1]], np.float32), cfg) is True


def test_pipeline_config_refuses_an_unknown_face_selection():
    with pytest.raises(ValueError, match="face_selection"):
        PipelineConfig(face_selection="nearest")


# ---- a rendered face, end to end ----------------------------------------------------------------

def render_face(model, intr, distance_m=0.6):
    """The neutral model facing the camera, grey-shaded on a grey background, as a camera gives it.

    :returns: colour (H, W, 3) uint8 RGB, depth (H, W) uint16 mm (the background wall at 1.5 m)
        and the renderer's buffers (``depth`` in m, ``mask``). Shared with the node tests.
    """
    from facediff_ros.core.face.morphable_model import transform
    from facediff_ros.core.render.renderer import Renderer
    tris, _, _ = model.triangles()
    v = transform(model.vertices(), np.eye(3), (0.0, 0.0, distance_m))
    buf = Renderer(intr).render(v, tris, vertex_colors=np.full((len(v), 3), 0.8))
    color = (np.clip(np.where(buf.mask[..., None], buf.color, 0.45), 0, 1) * 255).astype(np.uint8)
    depth = np.where(buf.mask, np.rint(buf.depth * 1000), 1500).astype(np.uint16)
    return color, depth, buf


@pytest.fixture(scope="module")
def face_frame(model):
    """A 640x480 render of the neutral model 0.6 m away: colour, depth (uint16 mm), intrinsics, buffers."""
    intr = Intrinsics.from_fov(640, 480, 69.0)
    color, depth, buf = render_face(model, intr)
    return color, depth, intr, buf


def _frame_fields(color, depth, intr, depth_encoding="16UC1"):
    info = images.intrinsics_to_camera_info_fields(intr)
    return (images.ImageFields.from_array(color, "rgb8"),
            images.ImageFields.from_array(depth, depth_encoding),
            images.CameraInfoFields(info["height"], info["width"], info["k"]))


def test_a_rendered_face_gives_landmarks_at_the_rendered_depth(face_frame):
    color, depth, intr, buf = face_frame
    with LandmarkPipeline() as pl:
        res = pl.process(*_frame_fields(color, depth, intr))
        lm = res.landmarks
        assert lm is not None
        assert set(res.timings_s) == set(pipeline.STAGES)
        assert (lm.image_width, lm.image_height) == (640, 480) and res.rgb.shape == (480, 640, 3)
        assert lm.valid.mean() > 0.9 and np.isnan(lm.points[~lm.valid]).all()
        px = np.rint(lm.uv).astype(int)
        rendered = buf.depth[px[lm.valid, 1], px[lm.valid, 0]]
        assert np.median(np.abs(lm.points[lm.valid, 2] - rendered)) < 0.002
        # Each valid point projects back onto its landmark (the back-projection's inverse).
        np.testing.assert_allclose(intr.project(lm.points[lm.valid]), lm.uv[lm.valid], atol=1e-3)

        # The same depth in metres (32FC1) works as well (lifting itself is compared unit against
        # unit in test_lifting; here the landmarks of a second tracking pass move slightly).
        metres = (depth / 1000.0).astype(np.float32)
        res_m = pl.process(*_frame_fields(color, metres, intr, "32FC1"))
        assert res_m.landmarks is not None and res_m.landmarks.valid.mean() > 0.9
        assert np.median(np.abs(res_m.landmarks.points[lm.valid & res_m.landmarks.valid, 2]
                                - lm.points[lm.valid & res_m.landmarks.valid, 2])) < 0.002

        # Depth everywhere, none of it in lifting's range: a drop, not 478 invalid landmarks.
        with pytest.raises(FrameDropped) as info:
            pl.process(*_frame_fields(color, np.full_like(depth, 65535), intr))
        assert info.value.reason == "no_depth_in_range"

        # A faceless image: no landmarks, the decode and face mesh times still reported.
        res = pl.process(*_frame_fields(np.full_like(color, 120), depth, intr))
        assert res.landmarks is None and set(res.timings_s) == {"decode", "face_mesh"}


# ---- reading the face mesh's output -------------------------------------------------------------

def test_normalized_xy_reads_serialized_landmark_lists_like_protobuf_does():
    from mediapipe.framework.formats import landmark_pb2

    from facediff_ros.core.landmarks.face_mesh import normalized_xy
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-0.2, 1.2, (478, 3)).astype(np.float32)
    lst = landmark_pb2.NormalizedLandmarkList()
    for x, y, z in xyz:
        lst.landmark.add(x=float(x), y=float(y), z=float(z))
    expected = xyz[:, :2]
    np.testing.assert_array_equal(normalized_xy(lst), expected)                     # protobuf object
    np.testing.assert_array_equal(normalized_xy(lst.SerializeToString()), expected)  # its bytes
    # Another layout (visibility set on one landmark) is parsed by protobuf: same values.
    lst.landmark[5].visibility = 0.5
    np.testing.assert_array_equal(normalized_xy(lst), expected)
    np.testing.assert_array_equal(normalized_xy(lst.SerializeToString()), expected)
    assert normalized_xy(landmark_pb2.NormalizedLandmarkList()).shape == (0, 2)


def test_face_mesh_itself_refuses_a_size_that_would_abort_the_process():
    """Called directly (not through the pipeline), a 32767 px side must raise, not SIGABRT."""
    from facediff_ros.core.landmarks.face_mesh import FaceMesh
    with FaceMesh() as fm:
        with pytest.raises(images.ImageTooLarge):
            fm.process(np.full((1, 32767, 3), 128, np.uint8))
        with pytest.raises(ValueError, match="empty"):
            fm.process(np.zeros((0, 5, 3), np.uint8))
        assert fm.process(np.full((1, 16384, 3), 128, np.uint8)) == []  # the limit itself runs

"""Face mesh wrapper: landmark boxes, the several-faces rule, presence, bad input."""

import numpy as np
import pytest

from facediff_ros.core.landmarks.face_mesh import (NUM_LANDMARKS, DetectedFace, FaceMesh, FaceMeshConfig,
                                                   landmarks_bbox, select_face)


def _face(u0, v0, size):
    uv = np.stack(np.meshgrid(np.linspace(u0, u0 + size, 22), np.linspace(v0, v0 + size, 22)), -1)
    uv = uv.reshape(-1, 2)[:NUM_LANDMARKS].astype(np.float32)
    return DetectedFace(uv=uv, presence=0.9, bbox=landmarks_bbox(uv, 640, 480))


def test_bbox_covers_landmark_pixels_and_clips_to_the_image():
    uv = np.array([[10.4, 20.6], [30.5, 25.0], [12.0, 40.49]])
    assert landmarks_bbox(uv, 640, 480) == (10, 21, 21, 20)  # pixels 10..30 x 21..40 (round half even)
    assert landmarks_bbox(np.array([[-5.0, -3.0], [700.0, 500.0]]), 640, 480) == (0, 0, 640, 480)
    assert landmarks_bbox(np.full((3, 2), np.nan), 640, 480) == (0, 0, 0, 0)


def test_select_largest_and_closest():
    small, big = _face(100, 100, 50), _face(300, 100, 150)
    depth = np.full((480, 640), 1.2, np.float32)
    depth[100:151, 100:151] = 0.5  # the small face is nearer
    assert select_face([small, big], "largest", depth) == 1
    assert select_face([small, big], "closest", depth) == 0
    depth[100:151, 100:151] = np.nan  # no depth on the small face: it cannot be the closest
    assert select_face([small, big], "closest", depth) == 1
    assert select_face([small, big], "closest", np.full((480, 640), np.nan, np.float32)) == 1  # fallback
    assert select_face([], "largest") == -1
    with pytest.raises(ValueError, match="rule"):
        select_face([small], "nearest")


def test_config_and_input_validation():
    with pytest.raises(ValueError, match="max_num_faces"):
        FaceMeshConfig(max_num_faces=0)
    with pytest.raises(ValueError, match="min_tracking_confidence"):
        FaceMeshConfig(min_tracking_confidence=1.5)
    with FaceMesh() as fm:
        with pytest.raises(ValueError, match="rgb"):
            fm.process(np.zeros((48, 64), np.uint8))
        with pytest.raises(ValueError, match="rgb"):
            fm.process(np.zeros((48, 64, 3), np.float32))
        assert fm.process(np.full((48, 64, 3), 128, np.uint8)) == []


def test_rendered_face_gives_478_landmarks_with_a_detector_presence(model):
    from facediff_ros.core.camera import Intrinsics
    from facediff_ros.core.face.morphable_model import transform
    from facediff_ros.core.render.renderer import Renderer
    intr = Intrinsics.from_fov(640, 480, 69.0)
    tris, _, _ = model.triangles()
    v = transform(model.vertices(), np.eye(3), (0.0, 0.0, 0.6))
    buf = Renderer(intr).render(v, tris, vertex_colors=np.full((len(v), 3), 0.8))
    img = (np.clip(np.where(buf.mask[..., None], buf.color, 0.45), 0, 1) * 255).astype(np.uint8)
    lm68 = intr.project(v[model.landmarks68])
    with FaceMesh() as fm:
        faces = [fm.process(img) for _ in range(3)]  # detection, then tracking
    assert all(len(f) == 1 for f in faces)
    f = faces[-1][0]
    assert f.uv.shape == (NUM_LANDMARKS, 2)
    # A detector score carried over to the tracked frames, not the fallback lower bound.
    assert 0.5 < f.presence <= 1.0 and f.presence == faces[0][0].presence
    # Eye corners and mouth corners (MediaPipe 33, 263, 61, 291) near their Multi-PIE vertices.
    err = np.linalg.norm(f.uv[[33, 263, 61, 291]] - lm68[[36, 45, 48, 54]], axis=1)
    assert err.max() < 4.0, err
    x0, y0, w, h = f.bbox
    assert x0 <= lm68[:, 0].min() + 5 and x0 + w >= lm68[:, 0].max() - 5


@pytest.mark.parametrize("static", [False, True], ids=["tracking", "detection-every-frame"])
def test_mediapipe_finds_the_actor_in_every_frame_of_the_embedded_sample(static):
    """Detection rate over the sample sequence; the face's 478 points surround its true landmarks."""
    from facediff_ros.synthetic.recording import load_ground_truth, play_recording
    from facediff_ros.nodes.capture import SAMPLE_RECORDING
    gt = load_ground_truth(SAMPLE_RECORDING)
    frames = list(play_recording(SAMPLE_RECORDING))
    assert len(frames) == len(gt["frame"]) >= 30
    found = 0
    with FaceMesh(FaceMeshConfig(static_image_mode=static)) as fm:
        for i, f in enumerate(frames):
            faces = fm.process(f.color)
            if not faces:
                continue
            found += 1
            # The ground-truth eye corners and mouth corners (Multi-PIE 37, 46, 49, 55) lie inside
            # the detected face's landmark box.
            x, y, w, h = faces[0].bbox
            pts = gt["landmarks_2d"][i][[36, 45, 48, 54]]
            assert np.all((pts[:, 0] >= x) & (pts[:, 0] <= x + w) & (pts[:, 1] >= y) & (pts[:, 1] <= y + h))
    rate = found / len(frames)
    print(f"MediaPipe detection rate on the sample ({'static' if static else 'tracking'}): "
          f"{found}/{len(frames)}")
    assert rate >= 0.95


def test_pixel_convention_is_pinned_by_a_mirror_image(model):
    """A midline landmark at u in an image is at W - 1 - u in its mirror (pixel-centre convention).

    An edge convention (u = x * W) would give W instead of W - 1: one pixel, far outside the
    spread measured here (~0.15 px), so the test tells the two apart.
    """
    from facediff_ros.core.camera import Intrinsics
    from facediff_ros.core.face.morphable_model import transform
    from facediff_ros.core.render.renderer import Renderer
    intr = Intrinsics.from_fov(640, 480, 69.0)
    tris, _, _ = model.triangles()
    v = transform(model.vertices(), np.eye(3), (0.0, 0.0, 0.6))
    buf = Renderer(intr).render(v, tris, vertex_colors=np.full((len(v), 3), 0.8))
    img = (np.clip(np.where(buf.mask[..., None], buf.color, 0.45), 0, 1) * 255).astype(np.uint8)
    midline = [1, 2, 4, 0, 13, 14, 17, 152, 168, 6]  # MediaPipe's nose, lips, chin, nasion
    with FaceMesh(FaceMeshConfig(static_image_mode=True)) as fm:
        u = fm.process(img)[0].uv[midline, 0]
        u_mirror = fm.process(np.ascontiguousarray(img[:, ::-1]))[0].uv[midline, 0]
    assert abs(float(np.mean(u + u_mirror)) - (intr.width - 1)) < 0.35

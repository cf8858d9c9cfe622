"""Hypothesis strategies for malformed (and well-formed) ROS messages: the fuzz tests' inputs.

Each strategy mixes plausible values with the abuse a live graph can meet: wrong encodings,
steps and sizes, truncated data, NaN/inf, absurd intrinsics, empty arrays, huge declared
dimensions, stamps that go backwards. Data buffers stay small (a few kB) so that thousands of
cases run in seconds; "huge" images are huge in their declared size only, which is what a node
must refuse before it allocates anything.
"""

import math
import os

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

# Cases per property: few in `make test`, >= 10,000 in `make soak` (FACEDIFF_FUZZ_EXAMPLES=10000).
FUZZ_EXAMPLES = int(os.environ.get("FACEDIFF_FUZZ_EXAMPLES", "20"))
# No example database: nothing is written under the repository (a failing case is printed instead).
settings.register_profile("facediff_fuzz", max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
FUZZ = settings.get_profile("facediff_fuzz")

ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "16UC1", "32FC1", "mono16", "8UC3", "16SC1",
             "64FC1", "yuv422", "bayer_rggb8", "", "RGB8", "rgb8 ", "32FC3")
BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "16UC1": 2, "32FC1": 4,
                   "mono16": 2, "8UC3": 3, "16SC1": 2, "64FC1": 8, "32FC3": 12}
UINT32 = st.integers(0, 2 ** 32 - 1)
INT32 = st.integers(-2 ** 31, 2 ** 31 - 1)
ODD_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-300, -1.0, 1e300, 3.4e38, 5e-324])
FLOATS = st.one_of(st.floats(-1e4, 1e4, allow_nan=False), ODD_FLOATS, st.floats(allow_nan=True,
                                                                                allow_infinity=True))
F32 = st.one_of(st.floats(-1e4, 1e4, allow_nan=False, width=32),
                ODD_FLOATS.map(lambda x: float(np.float32(x))),
                st.floats(width=32))


def stamp(sec, nanosec=0) -> Time:
    return Time(sec=int(sec), nanosec=int(nanosec))


@st.composite
def stamps(draw, base: int = 1000):
    """A stamp near ``base`` s: forward, equal, backwards, or at the ends of its range."""
    kind = draw(st.sampled_from(["near", "near", "near", "back", "edge"]))
    if kind == "near":
        return stamp(base + draw(st.integers(0, 5)), draw(st.integers(0, 999_999_999)))
    if kind == "back":
        return stamp(base - draw(st.integers(1, 10_000)), draw(st.integers(0, 999_999_999)))
    return stamp(draw(st.sampled_from([0, -1, -2 ** 31, 2 ** 31 - 1])), draw(UINT32))


def header(st_: Time, frame_id: str = "camera_color_optical_frame") -> Header:
    return Header(stamp=st_, frame_id=frame_id)


@st.composite
def image_fields(draw, shape=None, encodings=ENCODINGS):
    """Image fields (height, width, encoding, is_bigendian, step, data) that may be inconsistent.

    ``shape`` (H, W): the plausible size; else a small random one. The declared size is sometimes
    swapped, zero or huge; ``step`` sometimes off; ``data`` sometimes truncated or too long.
    """
    h, w = shape if shape is not None else (draw(st.integers(1, 24)), draw(st.integers(1, 32)))
    size = draw(st.sampled_from(["ok"] * 6 + ["swap", "zero", "huge", "random"]))
    if size == "swap":
        h, w = w, h
    elif size == "zero":
        h, w = draw(st.sampled_from([(0, w), (h, 0), (0, 0)]))
    elif size == "huge":
        h, w = draw(st.sampled_from([(16385, w), (h, 16385), (32767, 32767), (2 ** 32 - 1, 2 ** 32 - 1),
                                     (8192, 8192), (1, 2 ** 31)]))
    elif size == "random":
        h, w = draw(UINT32), draw(UINT32)
    enc = draw(st.one_of(st.sampled_from(encodings), st.text(max_size=8)))
    bpp = BYTES_PER_PIXEL.get(enc, draw(st.integers(1, 4)))
    step = w * bpp
    step_kind = draw(st.sampled_from(["ok"] * 6 + ["short", "padded", "random"]))
    if step_kind == "short":
        step = max(0, step - draw(st.integers(1, 8)))
    elif step_kind == "padded":
        step += draw(st.integers(1, 16))
    elif step_kind == "random":
        step = draw(UINT32)
    step = min(step, 2 ** 32 - 1)
    n = h * step
    data_kind = draw(st.sampled_from(["ok"] * 5 + ["truncated", "long", "empty", "random"]))
    if n > 1 << 16:  # declared size over 64 kB: never allocate it, send a little
        n = draw(st.integers(0, 1024))
    elif data_kind == "truncated":
        n = max(0, n - draw(st.integers(1, max(1, n))))
    elif data_kind == "long":
        n += draw(st.integers(1, 64))
    elif data_kind == "empty":
        n = 0
    elif data_kind == "random":
        n = draw(st.integers(0, 4096))
    fill = draw(st.sampled_from(["random", "zero", "ff", "nan", "inf", "const"]))
    if fill == "random":
        data = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1))).integers(0, 256, n,
                                                                                 np.uint8).tobytes()
    elif fill == "zero":
        data = bytes(n)
    elif fill == "ff":
        data = b"\xff" * n
    elif fill in ("nan", "inf"):
        v = np.array(np.nan if fill == "nan" else np.inf, "<f4").tobytes()
        data = (v * (n // 4 + 1))[:n]
    else:  # a plausible depth (~0.6 m as 16UC1 mm / 32FC1 m) or grey
        v = {2: np.array(600, "<u2").tobytes(), 4: np.array(0.6, "<f4").tobytes()}.get(bpp, b"\x80")
        data = (v * (n // len(v) + 1))[:n]
    return dict(height=h, width=w, encoding=enc, is_bigendian=draw(st.sampled_from([0, 0, 0, 1, 255])),
                step=step, data=data)


def image_msg(fields, hdr: Header) -> Image:
    msg = Image(header=hdr, height=fields["height"], width=fields["width"], encoding=fields["encoding"],
                is_bigendian=fields["is_bigendian"], step=fields["step"])
    msg.data = fields["data"]
    return msg


@st.composite
def camera_info_fields(draw, shape=None):
    """CameraInfo size and K: plausible, perturbed, or absurd (NaN/inf, zero, negative, skewed, huge)."""
    h, w = shape if shape is not None else (draw(st.integers(1, 24)), draw(st.integers(1, 32)))
    f = 0.8 * max(h, w) + 1.0
    k = [f, 0.0, (w - 1) / 2, 0.0, f, (h - 1) / 2, 0.0, 0.0, 1.0]
    kind = draw(st.sampled_from(["ok"] * 4 + ["entry", "entries", "zero", "size"]))
    if kind == "entry":
        k[draw(st.integers(0, 8))] = draw(FLOATS)
    elif kind == "entries":
        k = draw(st.lists(FLOATS, min_size=9, max_size=9))
    elif kind == "zero":
        k = [0.0] * 9
    elif kind == "size":
        h, w = draw(st.sampled_from([(0, w), (h, 0), (2 ** 32 - 1, w), (h + 1, w), (h, w * 2)]))
    d = draw(st.lists(FLOATS, max_size=8))
    model = draw(st.sampled_from(["plumb_bob", "rational_polynomial", "equidistant", "", "x" * 40]))
    return dict(height=h, width=w, k=k, d=d, distortion_model=model)


def camera_info_msg(fields, hdr: Header) -> CameraInfo:
    return CameraInfo(header=hdr, height=fields["height"], width=fields["width"], k=fields["k"],
                      d=fields["d"], distortion_model=fields["distortion_model"])

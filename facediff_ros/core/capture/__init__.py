"""Stage 1, capture: frame sources (RealSense camera, recording) and a frame's arrays for publishing."""

"""Stage 2, landmarks: MediaPipe face mesh, depth lifting and the per-frame landmark pipeline."""

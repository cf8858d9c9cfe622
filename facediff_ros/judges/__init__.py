"""Independent evaluation judges (no ROS): identity (dlib embeddings) and expression (re-fit + category)."""

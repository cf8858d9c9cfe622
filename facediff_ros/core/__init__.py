"""ROS-free core of facediff_ros: plain numpy/torch modules, each with one job.

Nothing in this package may import rclpy or any ROS message module (a test enforces it), so it
runs and is tested without a ROS graph. Modules follow the pipeline order of
``shared/design/graph.md``: a module may import the ones before it, never the ones after it.
"""

"""ROS-free core of facediff_ros: plain numpy/torch modules, each with one job.

Nothing in this package may import rclpy or any ROS message module, so it runs and is tested
without a ROS graph. The modules directly in here are the basics (camera, image fields, sync,
cloud arrays, colour); the sub-packages are the pipeline's stages in data-flow order --
capture, landmarks, face (model), render, fitting, editor -- and a stage imports the basics and
earlier stages only, never later ones (test/test_ros_free_core.py enforces both rules). Offline
tools that make data live in :mod:`facediff_ros.synthetic`, which the core never imports.
"""

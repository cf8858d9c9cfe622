"""facediff_ros: RGB-D face capture -> landmarks -> 3DMM fitting -> diffusion editor -> avatar cloud.

The ROS-free core lives in :mod:`facediff_ros.core` (no rclpy import anywhere there); the ROS 2
nodes in :mod:`facediff_ros.nodes` only wire topics, parameters and diagnostics to it. The
generated message classes (``facediff_ros.msg``) come from the package's rosidl build.
"""

import pkgutil

# In a colcon install the generated modules (facediff_ros.msg, the typesupport extensions) sit
# in this folder; in `make setup`'s editable install they sit in a folder of their own on
# sys.path, which this joins to the package.
__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"

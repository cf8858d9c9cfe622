"""ROS 2 nodes: wiring, parameters and diagnostics around the ROS-free core (one class per node)."""

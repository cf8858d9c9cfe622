"""Thin ROS-side adapters: numpy <-> ROS messages, the DDS environment. The core never imports these."""

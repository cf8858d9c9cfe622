"""Starting the whole graph: one description (graph.py) used by launch/avatar.launch.py and by
``facediff bringup`` (processes.py, the nodes as separate processes without ``ros2 launch``)."""

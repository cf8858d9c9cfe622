"""The whole facediff_ros graph: capture -> landmarks -> fitting -> editor (-> rviz2).

    ros2 launch facediff_ros avatar.launch.py [source:=webcam video_device:=0] [expression:=sad] ...
    ros2 launch facediff_ros avatar.launch.py --show-args    # every argument with its description

Arguments, nodes, parameters files and remaps all come from facediff_ros/bringup/graph.py, the
same description ``facediff bringup`` starts without ros2 launch. Override order per parameter:
launch argument > params_file > config/<node>.yaml > the node's defaults (an argument left '' sets
nothing).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from facediff_ros.bringup import graph


def _parameter_dict(parameters):
    # A plain str in a launch_ros parameter dict is parsed as YAML ('0' -> 0, 'true' -> True);
    # ParameterValue(value_type=...) keeps each value the type the node declares.
    return {k: ParameterValue(v, value_type=type(v)) for k, v in parameters.items()}


def _nodes(context, *args, **kwargs):
    # Validation (unknown source, missing files, a bad intensity ...) raises ValueError with one
    # line naming the argument; launch reports it and exits non-zero before any node starts.
    values = graph.resolve({a.name: LaunchConfiguration(a.name).perform(context) for a in graph.ARGUMENTS})
    actions = []
    for spec in graph.node_specs(values):
        parameters = list(spec.params_files)
        if spec.parameters:
            parameters.append(_parameter_dict(spec.parameters))  # last: launch arguments win
        ros_arguments = ["--log-level", spec.log_level] if spec.log_level else None
        actions.append(Node(package=spec.package, executable=spec.executable, name=spec.name,
                            namespace=spec.namespace or None, parameters=parameters or None,
                            remappings=spec.remappings or None, arguments=spec.arguments or None,
                            ros_arguments=ros_arguments, output="screen"))
    return actions


def generate_launch_description():
    declared = [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description,
                                      **({"choices": list(a.choices)} if a.choices else {}))
                for a in graph.ARGUMENTS]
    return LaunchDescription(declared + [OpaqueFunction(function=_nodes)])

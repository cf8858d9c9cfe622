"""A minimal node for the bringup process tests: a real rclpy participant (so a Fast DDS
shared-memory segment exists) started and stopped the way every package node is
(facediff_ros.nodes.spin.run); prints one line once it spins."""

from rclpy.node import Node

from facediff_ros.nodes.spin import run


class FakeNode(Node):
    def __init__(self):
        super().__init__("fake")
        print(f"fake node {self.get_fully_qualified_name()} up", flush=True)


def main():
    run(FakeNode)


if __name__ == "__main__":
    main()

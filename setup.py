"""pip / editable install of the facediff_ros Python package (library, nodes, `facediff` CLI).

The ROS 2 interfaces in msg/ are built by CMakeLists.txt (rosidl); `make setup` does both.
In a ROS 2 workspace, `colcon build` uses CMakeLists.txt alone.
"""

from setuptools import find_packages, setup

setup(
    name="facediff_ros",
    version="0.1.0",
    description="RGB-D face -> 3DMM -> few-step diffusion expression editor -> ROS 2 avatar cloud",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["facediff_ros", "facediff_ros.*"]),
    # The committed MediaPipe correspondence table and the embedded sample recording.
    package_data={"facediff_ros": ["data/*.npz", "data/*.db3", "data/editor/*.pt", "data/editor/*.json",
                                   "data/photos/*.jpg", "data/photos/*.md"]},
    install_requires=["numpy"],
    entry_points={
        "console_scripts": [
            "facediff = facediff_ros.cli:main",
            "facediff-capture = facediff_ros.nodes.capture:main",
            "facediff-landmarks = facediff_ros.nodes.landmarks:main",
            "facediff-fitting = facediff_ros.nodes.fitting:main",
            "facediff-editor = facediff_ros.nodes.editor:main",
        ],
    },
)

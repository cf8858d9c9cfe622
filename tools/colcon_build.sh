#!/usr/bin/env bash
# `colcon build` of facediff_ros against the ROS 2 wheels in .venv (no ROS install on this machine).
# colcon lives in a venv of its own: installed into the package venv it would downgrade setuptools.
# In a normal ROS 2 Jazzy/Kilted install, plain `colcon build --packages-select facediff_ros` is all.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=$ROOT/.venv
COLCON_VENV=$ROOT/build/colcon-venv
WS=$ROOT/build/colcon_ws
if [ ! -x "$COLCON_VENV/bin/colcon" ]; then
  python3 -m venv "$COLCON_VENV"
  "$COLCON_VENV/bin/pip" install -q --disable-pip-version-check colcon-common-extensions >"$ROOT/build/colcon-pip.log" 2>&1 \
    || { echo "could not install colcon-common-extensions (log: build/colcon-pip.log)" >&2; exit 1; }
fi
mkdir -p "$WS/src"
ln -sfn "$ROOT" "$WS/src/facediff_ros"
cd "$WS"
AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV PATH=$VENV/bin:$PATH \
  "$COLCON_VENV/bin/colcon" build --packages-select facediff_ros --parallel-workers 2 \
    --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF
echo "installed to $WS/install/facediff_ros"

#!/usr/bin/env bash
# One-command set-up (run by `make setup`, and by `make demo` / `make test` when needed).
# Idempotent: each step is skipped when its stamp says it is done, so a second run takes seconds.
#   1. apt packages the code needs (libusb for pyrealsense2/open3d, Vulkan/Mesa for open3d's
#      renderer, cmake + g++ for the message build), installed only when missing;
#   2. a project-local venv (.venv) with the pinned requirements, then mediapipe --no-deps;
#   3. the ROS 2 interfaces in msg/ built with rosidl (CMake) and installed into the venv;
#   4. the package itself in editable mode;
#   5. the ICT-FaceKit cache (verified, converted; see facediff_ros/core/assets.py).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
PY=$VENV/bin/python
PYTHON=${PYTHON:-python3.11}
BUILD=$ROOT/build/msgs
mkdir -p "$ROOT/build"

die() { echo "facediff_ros setup: $*" >&2; exit 1; }
step() { echo "== setup: $*"; }

# ---- 1. apt packages -------------------------------------------------------------------------
APT_PACKAGES=(libusb-1.0-0 libvulkan1 mesa-vulkan-drivers cmake g++)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  step "installing apt packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
    die "could not install the apt packages ${missing[*]}. Install them yourself (apt-get install ${missing[*]}) and run 'make setup' again."
  fi
fi

# ---- 2. venv + pinned requirements -----------------------------------------------------------
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
  || die "Python 3.11 is needed (the ROS 2 wheels and the torch pin are cp311); set PYTHON=/path/to/python3.11"
req_hash=$(cat requirements/base.txt | sha256sum | cut -c1-16)
if [ ! -f "$VENV/.stamp-req-$req_hash" ]; then
  step "creating the venv $VENV and installing pinned requirements (about a minute)"
  [ -x "$PY" ] || "$PYTHON" -m venv "$VENV" || die "could not create the venv $VENV"
  # pip's log goes to a file: this machine's pip config names index folders that may not
  # exist, and pip warns about each of them.
  "$PY" -m pip install -q --disable-pip-version-check -r requirements/base.txt >"$ROOT/build/pip.log" 2>&1 \
    || { grep -v "^WARNING: Location" "$ROOT/build/pip.log" | tail -20 >&2
         die "pip could not install requirements/base.txt (log: build/pip.log); is PyPI reachable?"; }
  # mediapipe's declared dependencies would break the numpy/protobuf pins; the face mesh
  # needs only what requirements/base.txt already installs.
  "$PY" -m pip install -q --disable-pip-version-check --no-deps mediapipe==0.10.21 >>"$ROOT/build/pip.log" 2>&1 \
    || die "pip could not install mediapipe==0.10.21 (log: build/pip.log)"
  rm -f "$VENV"/.stamp-req-*
  touch "$VENV/.stamp-req-$req_hash"
fi

# ---- 3. interfaces (rosidl) ------------------------------------------------------------------
msg_hash=$(cat CMakeLists.txt package.xml msg/*.msg | sha256sum | cut -c1-16)
GEN=$VENV/lib/facediff_ros_generated
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
if [ ! -f "$VENV/.stamp-msgs-$msg_hash" ]; then
  step "building the messages in msg/ with rosidl"
  # The typesupports are found through the ament index, hence AMENT_PREFIX_PATH; the Python
  # part goes to a folder of its own, joined to the source package by pkgutil.extend_path.
  if ! { AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV cmake -S . -B "$BUILD" \
          -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF \
          -DFACEDIFF_INSTALL_PYTHON_PACKAGE=OFF -DPYTHON_INSTALL_DIR=lib/facediff_ros_generated \
          >"$ROOT/build/msgs-configure.log" 2>&1 \
        && cmake --build "$BUILD" -j2 >"$ROOT/build/msgs-build.log" 2>&1 \
        && cmake --install "$BUILD" >"$ROOT/build/msgs-install.log" 2>&1; }; then
    tail -20 "$ROOT"/build/msgs-*.log >&2 || true
    die "building the messages failed; the logs are build/msgs-*.log (cmake and g++ are needed)."
  fi
  # rosidl installs an egg-info and an empty __init__.py for the generated part; without them
  # that folder is a plain portion of the facediff_ros package, so the source tree stays the
  # package and there is one distribution named facediff_ros.
  rm -rf "$GEN"/facediff_ros-*.egg-info "$GEN/facediff_ros/__init__.py"
  echo "$GEN" > "$SITE/facediff_ros_generated.pth"
  rm -f "$VENV"/.stamp-msgs-*
  touch "$VENV/.stamp-msgs-$msg_hash"
fi

# ---- 4. the package, editable ----------------------------------------------------------------
pkg_hash=$(cat setup.py tools/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$VENV/.stamp-pkg-$pkg_hash" ]; then
  step "installing facediff_ros (editable)"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --config-settings editable_mode=compat -e . >>"$ROOT/build/pip.log" 2>&1 \
    || die "pip install -e . failed (log: build/pip.log)"
  rm -f "$VENV"/.stamp-pkg-*
  touch "$VENV/.stamp-pkg-$pkg_hash"
fi

# ---- 5. the face model -----------------------------------------------------------------------
"$PY" -m facediff_ros.cli assets || die "the face model asset is not ready (see the message above)"

"$PY" -c 'import rclpy, facediff_ros.msg, pyrealsense2, open3d, mediapipe' 2>/dev/null \
  || die "the venv is incomplete: 'import rclpy, facediff_ros.msg, pyrealsense2, open3d, mediapipe' fails. Remove .venv and run 'make setup' again."
echo "== setup: ready ($VENV)"

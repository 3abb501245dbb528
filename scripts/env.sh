# shellcheck shell=bash
# Environment shared by every script of this repository. Source it:  . scripts/env.sh
#
# Sets PEBAL_ROOT (repository root), VENV (the project's virtualenv, default $PEBAL_ROOT/.venv,
# override with PEBAL_VENV), puts $VENV/bin first on PATH, and keeps all ROS 2 (DDS) traffic on
# this machine: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (Jazzy and later) and ROS_LOCALHOST_ONLY=1
# (Humble). ROS_DOMAIN_ID defaults to 42 unless already set.
#
# The virtualenv is a self-contained ROS 2 prefix (ROS wheels + this package installed into it by
# scripts/setup.sh); nothing else needs to be sourced. Outside of ROS, nothing here is required.

PEBAL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PEBAL_ROOT
export VENV="${PEBAL_VENV:-$PEBAL_ROOT/.venv}"

case ":$PATH:" in
  *":$VENV/bin:"*) ;;
  *) export PATH="$VENV/bin:$PATH" ;;
esac

export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_LOCALHOST_ONLY=1
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-42}"
export PYTHONUNBUFFERED=1
# Camera-sized raw images need the large-image Fast DDS profile in every participant (publishers too);
# a profile already chosen by the user is kept. UDP in it is restricted to 127.0.0.1 by the profile.
if [ -z "${FASTDDS_DEFAULT_PROFILES_FILE:-}" ] && [ -f "$PEBAL_ROOT/config/fastdds_large_images.xml" ]; then
  export FASTDDS_DEFAULT_PROFILES_FILE="$PEBAL_ROOT/config/fastdds_large_images.xml"
fi
# Generated ROS messages (Jazzy/Kilted) skip field type/range checks unless this is 1; without them
# a numpy float32 field silently publishes as 0.0 and an out-of-range uint32 wraps. Checked here.
export ROS_PYTHON_CHECK_FIELDS="${ROS_PYTHON_CHECK_FIELDS:-1}"
# The venv is the ament prefix (for ament_index_python / `ros2 pkg prefix`-style look-ups).
case ":${AMENT_PREFIX_PATH:-}:" in
  *":$VENV:"*) ;;
  *) export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" ;;
esac

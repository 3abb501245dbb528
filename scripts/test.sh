#!/usr/bin/env bash
# The test command: set up (idempotent, fast when nothing changed), then run the whole test suite
# with loopback-only ROS 2 discovery. Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -k messages -x
#   bash scripts/test.sh test/test_messages.py      (only that file)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$HERE/setup.sh"
explicit_domain="${ROS_DOMAIN_ID:-}"
# shellcheck source=scripts/env.sh
. "$HERE/env.sh"
# Unless the caller chose a ROS_DOMAIN_ID, test/conftest.py picks one per test session, so that
# concurrent test runs on this machine do not hear each other.
[ -n "$explicit_domain" ] || unset ROS_DOMAIN_ID
cd "$PEBAL_ROOT"
# Whole suite (test/) unless the arguments name test files/directories themselves.
targets=(test)
for arg in "$@"; do
  case "$arg" in -*) ;; *) if [ -e "${arg%%::*}" ]; then targets=(); break; fi ;; esac
done
exec "$VENV/bin/python" -m pytest -q "${targets[@]}" "$@"

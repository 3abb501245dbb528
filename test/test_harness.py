"""pebal_perception.testing: the children a test starts end with the test process, however it ends."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from pebal_perception.testing import ros_harness

CRASHING_PARENT = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from pebal_perception.testing.ros_harness import ChildProcess
    child = ChildProcess([sys.executable, "-c", "import time; time.sleep(120)"], Path(sys.argv[1]))
    print(child.pid, flush=True)
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)  # a crash: no clean-up code runs
""")


def _gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":  # a zombie waiting for init: ended
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux only")
def test_a_child_process_dies_with_the_test_process_that_started_it(tmp_path):
    parent = subprocess.run([sys.executable, "-c", CRASHING_PARENT, str(tmp_path / "child.log")],
                            capture_output=True, text=True, timeout=120, env=ros_harness.child_env())
    pid = int(parent.stdout.split()[0])
    try:
        assert _gone(pid), f"child {pid} outlived the crashed test process"
    finally:
        if not _gone(pid, 0.0):
            os.kill(pid, 9)

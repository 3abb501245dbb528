"""Helpers for the project's own tests and benchmarks (never imported by the core, the node or the CLIs).

* ``ros_harness``: the loopback ROS environment for child processes, the installed detector node as a
  subprocess (``NodeProcess``), a spinning peer node with message collectors (``Peer``, ``Collector``)
  and the prerequisite checks (``ros_unavailable``) tests turn into skips;
* ``soak``: the soak runner (node + looping ``pebal-bag play``, ``/proc`` sampling, analysis) shared by
  ``test/test_soak.py`` and ``bench/bench_soak.py``.

rclpy and the message packages are imported inside the functions that need them, so importing these
modules costs nothing where ROS is not installed.
"""

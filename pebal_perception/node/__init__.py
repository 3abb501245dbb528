"""The ROS 2 detector node (``detector_node``) and its ROS-free frame-processing core (``processing``)."""

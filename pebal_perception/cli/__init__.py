"""Command-line tools of the ROS-free core (pebal-detect, ...)."""

"""Command-line entry points of pebal_training (console scripts); none of them imports ROS."""

"""The ROS-free model and inference core: models, checkpoints, scoring, inference engine.

Nothing in this package imports rclpy or any ROS module; training and the ROS node both build on it.
"""

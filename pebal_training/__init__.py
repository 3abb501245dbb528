"""pebal_training: PEBAL fine-tuning with outlier exposure, losses, metrics, evaluation and export.

Builds on :mod:`pebal_perception.core`; never imports ROS.
"""

__version__ = "0.1.0"

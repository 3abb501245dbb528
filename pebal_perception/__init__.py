"""pebal_perception: PEBAL anomaly (unexpected obstacle) segmentation for ROS 2.

The generated ROS interfaces (``pebal_perception.msg``) are installed by the ament build into the
prefix's site-packages under this same package name; extending ``__path__`` lets a source checkout
(or a ``pip install``) and the generated modules live side by side.
"""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"

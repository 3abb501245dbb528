"""pip packaging of the ROS-free parts: ``pip install .`` works without any ROS installation.

Installs the Python packages pebal_perception (inference core, CLI tools; the ROS node needs rclpy,
which is optional) and pebal_training (fine-tuning, evaluation, export), plus console scripts.
The ROS side (messages, launchers, ament index) is built by CMake (CMakeLists.txt, which ignores
this file); scripts/setup.sh does both for development.

Only console scripts whose module exists are declared, so an install never carries a broken one.
"""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent

CONSOLE_SCRIPTS = {
    "pebal-detect": "pebal_perception.cli.detect:main",
    "pebal-bag": "pebal_perception.cli.bag:main",
    "pebal-camera": "pebal_perception.cli.camera:main",
    "pebal-synth": "pebal_training.cli.synth:main",
    "pebal-finetune": "pebal_training.cli.finetune:main",
    "pebal-eval": "pebal_training.cli.evaluate:main",
    "pebal-calibrate": "pebal_training.cli.calibrate:main",
    "pebal-export": "pebal_training.cli.export:main",
}


def _module_exists(target: str) -> bool:
    module = target.split(":", 1)[0]
    base = HERE.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _packages() -> list[str]:
    """pebal_perception, pebal_training and every directory below them holding Python modules
    (also the ones without __init__.py, which find_packages() would silently leave out)."""
    found = []
    for top in ("pebal_perception", "pebal_training"):
        for path in sorted([HERE / top, *(HERE / top).rglob("*")]):
            rel = path.relative_to(HERE)
            if (path.is_dir() and any(path.glob("*.py"))
                    and not any(part == "__pycache__" or part.startswith(".") for part in rel.parts)):
                found.append(".".join(rel.parts))
    return found


def _version() -> str:
    for line in (HERE / "pebal_perception" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError("__version__ not found in pebal_perception/__init__.py")


setup(
    # Not "pebal_perception": the ament build installs an egg-info of that name (for the generated
    # messages) into the same site-packages, and pip would uninstall it (and the messages with it).
    name="pebal",
    version=_version(),
    description="PEBAL road-anomaly (unexpected obstacle) segmentation: inference core, "
                "ROS 2 node, fine-tuning and evaluation tools",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").is_file() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=_packages(),  # never test/, bench/, scripts/
    # The embedded default model (pebal_perception/data/default_model.pt + its .json record).
    package_data={"pebal_perception": ["data/*.pt", "data/*.json", "data/*.txt"]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "pillow>=10",
        "pyyaml>=6",
        "tqdm>=4.60",
        "scikit-learn>=1.3",
        "matplotlib>=3.7",
        "tensorboard>=2.14",
        "rosbags>=0.9.20",
    ],
    extras_require={
        "export": ["onnx>=1.15", "onnxruntime>=1.17"],
        # the compiled CPU runtimes of core/backends.py (backend auto picks OpenVINO when installed)
        "runtimes": ["onnx>=1.15", "onnxruntime>=1.17", "openvino>=2025.0"],
        # backend tensorrt on NVIDIA machines (TensorRT 10's Python API; not in requirements.txt: GPU only)
        "tensorrt": ["tensorrt>=10.0"],
        # H.264 MP4 videos (cli.video; without it: Motion-JPEG AVI)
        "video": ["imageio-ffmpeg>=0.5"],
        "test": ["pytest>=7", "hypothesis>=6"],
    },
    entry_points={
        "console_scripts": [f"{name}={target}" for name, target in CONSOLE_SCRIPTS.items()
                            if _module_exists(target)],
    },
    zip_safe=False,
    # Keep setuptools' scratch files apart from the CMake build tree that shares build/.
    options={"build": {"build_base": "build/setuptools"}},
)

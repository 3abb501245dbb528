"""What every image/label reader shares: file reading, pairing files by name, the paired base class.

Files are listed in sorted order (deterministic, unlike the reference's ``os.listdir``) and paired by
name, never by position. A wrong or incomplete tree fails at construction with one
:class:`DatasetError` line that names the path and says what was expected. A broken sample (unreadable
file, image/label size mismatch, label values the encoding does not define) raises a
:class:`DatasetError` naming the file when it is read; with ``on_error="skip"`` it is instead counted
in ``skipped`` and ``__getitem__`` returns ``None`` (iterating the dataset, or
:func:`collate_skip_none` in a DataLoader, drops it). Skips are counted per process: under a
multi-worker DataLoader each worker counts its own.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np
from PIL import Image
from torch.utils.data import Dataset, default_collate

from pebal_training.data import labels as L

# Every reader logs under the public entry point's name, so one logging filter covers them all.
log = logging.getLogger("pebal_training.data.datasets")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
ON_ERROR = ("raise", "skip")
_LIST_LIMIT = 5


class DatasetError(ValueError):
    """A dataset tree or file is not what the reader expects (one line, naming the path)."""


# --------------------------------------------------------------------------------------------------
# file helpers


def require_dir(path: Path, expected: str) -> Path:
    """``path`` if it is a folder, else a :class:`DatasetError` saying what was ``expected`` there."""
    if not path.is_dir():
        what = "not a folder" if path.exists() else "folder missing"
        raise DatasetError(f"{path}: {what} (expected {expected})")
    return path


def list_files(folder: Path, exts: Sequence[str], pattern: str = "*") -> list[Path]:
    """Sorted files in ``folder`` matching ``pattern`` whose suffix is one of ``exts`` (any case)."""
    exts = tuple(e.lower() for e in exts)
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in exts)


def short_name_list(names: Sequence[str]) -> str:
    """The first few ``names`` comma-joined, so an error line stays one line however many files."""
    shown = ", ".join(names[:_LIST_LIMIT])
    return shown + (", …" if len(names) > _LIST_LIMIT else "")


def no_label_error(folder: Path, names: Sequence[str], expected: str) -> DatasetError:
    """The error for images in ``folder`` whose label file is missing."""
    n = len(names)
    noun = "image has" if n == 1 else "images have"
    return DatasetError(f"{folder}: {n} {noun} no label (expected {expected}): {short_name_list(list(names))}")


def read_rgb(path: str | Path) -> np.ndarray:
    """Reads an image file as H x W x 3 uint8 RGB (cv2, BGR -> RGB, as the reference)."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise DatasetError(f"{path}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path: str | Path) -> np.ndarray:
    """Reads a single-channel label PNG as a 2-D integer array (palette PNGs give their indices).

    A 3-channel file whose channels are all equal is accepted (grey saved as RGB); a real colour
    image is rejected: it is a colourised visualisation, not a label map.
    """
    try:
        with Image.open(path) as im:
            arr = np.array(im)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable label image ({exc.__class__.__name__})") from None
    if arr.ndim == 3:
        if arr.shape[2] in (3, 4) and np.array_equal(arr[..., 0], arr[..., 1]) \
                and np.array_equal(arr[..., 0], arr[..., 2]):
            arr = arr[..., 0]
        else:
            raise DatasetError(f"{path}: colour label image with {arr.shape[2]} channels "
                               "(expected a single-channel label map)")
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise DatasetError(f"{path}: not a single-channel integer label map (shape {arr.shape}, {arr.dtype})")
    return arr


def collate_skip_none(batch: list[Any]) -> Any:
    """DataLoader ``collate_fn`` that drops the ``None`` items ``on_error="skip"`` returns."""
    kept = [item for item in batch if item is not None]
    return default_collate(kept) if kept else None


# --------------------------------------------------------------------------------------------------
# paired image / label datasets


class PairedDataset(Dataset):
    """A sorted list of (image, label, name) files with per-sample label conversion."""

    #: Human-readable dataset name, used in messages.
    title = "dataset"

    def __init__(self, on_error: str = "raise", transform: Callable | None = None) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.on_error = on_error
        self.transform = transform
        self.samples: list[tuple[Path, Path, str]] = []
        #: index -> one-line reason, for samples skipped with ``on_error="skip"``.
        self.skipped: dict[int, str] = {}

    # subclasses implement: raw label array + label path -> converted uint8 label
    def _convert(self, raw: np.ndarray, label_path: Path) -> np.ndarray:
        raise NotImplementedError

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @property
    def names(self) -> list[str]:
        return [name for _, _, name in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples)"

    def load(self, index: int) -> dict[str, Any]:
        """Reads sample ``index``; raises :class:`DatasetError` naming the file on any problem."""
        image_path, label_path, name = self.samples[index]
        image = read_rgb(image_path)
        raw = read_label(label_path)
        if raw.shape != image.shape[:2]:
            raise DatasetError(f"{label_path}: label is {raw.shape[1]}x{raw.shape[0]} but its image "
                               f"{image_path.name} is {image.shape[1]}x{image.shape[0]} (W x H)")
        try:
            label = self._convert(raw, label_path)
        except L.LabelValueError as exc:
            raise DatasetError(f"{label_path}: {exc}") from None
        return {"image": image, "label": label, "name": name}

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        if index < 0:
            index += len(self)
        try:
            sample = self.load(index)
        except DatasetError as exc:
            if self.on_error == "raise":
                raise
            if index not in self.skipped:
                log.warning("skipping sample %d: %s", index, exc)
            self.skipped[index] = str(exc)
            return None
        if self.transform is not None:
            sample["image"], sample["label"] = self.transform(sample["image"], sample["label"])
        return sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            sample = self[i]
            if sample is not None:
                yield sample


def pair_by_stem(images: list[Path], label_dir: Path, label_name: Callable[[Path], str],
                  expected: str, missing: str = "raise") -> tuple[list[tuple[Path, Path, str]], list[str]]:
    """Pairs each image with ``label_dir / label_name(image)``; returns (pairs, unlabelled names)."""
    pairs, unlabelled = [], []
    for img in images:
        lab = label_dir / label_name(img)
        if lab.is_file():
            pairs.append((img, lab, img.stem))
        else:
            unlabelled.append(img.name)
    if unlabelled and missing == "raise":
        raise no_label_error(label_dir, unlabelled, expected)
    return pairs, unlabelled


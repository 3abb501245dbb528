"""File output that never leaves a half-written file behind, and never replaces what the tool did not write.

Writing: :func:`atomic_write` writes a temp file beside the target, then renames it over the target.

What an output may replace (the one rule every command follows; its checks are the functions below):

* **A file output** (a path naming one file: a checkpoint, ``report.json``, a frame's PNG) may be absent
  or a regular file, which is then replaced atomically (a symbolic link to a regular file is replaced
  by the new file; the file it pointed to is left as it was). A folder, a device node, a fifo, a
  socket, or a symbolic link to one of them is refused (:func:`check_output_file`).
* **An output folder** (``pebal-detect -o``, ``pebal-eval -o``, a run folder, ...) may be absent,
  empty, or a folder this tool wrote before: one holding only files named the way the tool names its
  outputs (:class:`FolderLayout`; manifests such as ``summary.json`` must also be the tool's own). In
  such a folder a re-run replaces the regular files of the same name; it never deletes anything.
  A folder holding anything else, and a path that is a file, a device, a fifo or a socket, is
  refused (:func:`check_output_folder`). No marker file is written: the layout is the recognition.
* **Removing** a folder happens only where a tool must start afresh, and only for a folder that
  passes :func:`check_output_folder` (:func:`remove_output_folder`); a bag is replaced only when it is
  exactly a bag the tool wrote (:func:`pebal_perception.core.bag.check_bag_output`).

A refusal is an :class:`OutputPathError` whose message is one line, ``PATH: what is there``.
"""
from __future__ import annotations

import io
import json
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import cv2
import numpy as np


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = True) -> Path:
    """Calls ``write(fileobj)`` on a temp file in the target folder and renames it over ``path``.

    The rename is atomic on POSIX, so readers (and a resumed run after a crash) only ever see the old
    file or the complete new one. The temp file is removed if ``write`` raises. ``path`` must be absent
    or a regular file (:func:`check_output_file`, checked before writing and again before the rename):
    a folder, device node, fifo or socket there raises :class:`OutputPathError` and is left alone.
    """
    def fill(fd: int, _tmp: str) -> None:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())

    return _atomic_replace(path, fill)


def atomic_write_path(path: str | os.PathLike, write: Callable[[str], None], suffix: str = "") -> Path:
    """As :func:`atomic_write` for writers that need a file *name* (video encoders, external tools):
    ``write(tmp_name)`` fills a temp file (``.NAME.XXXX.tmp`` + ``suffix``, e.g. the extension an encoder
    needs) in the target folder, which is then renamed over ``path``, or removed if ``write`` raises."""
    def fill(fd: int, tmp: str) -> None:
        os.close(fd)
        write(tmp)

    return _atomic_replace(path, fill, suffix)


def _atomic_replace(path: str | os.PathLike, fill: Callable[[int, str], None], suffix: str = "") -> Path:
    """The one temp file / rename / clean-up: ``fill(fd, tmp_name)`` writes the temp file (and closes ``fd``)."""
    path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX + suffix, dir=path.parent)
    try:
        try:
            os.fchmod(fd, _output_mode(path))  # mkstemp's 0600 would hide outputs from other users
        except BaseException:
            os.close(fd)
            raise
        fill(fd, tmp)
        replace_checked(tmp, path)
        _fsync_directory(path.parent)  # makes the rename itself durable (power loss, not just a crash)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


_TEMP_SUFFIX = ".tmp"


def _output_mode(path: Path) -> int:
    """Permissions for a new output: those of the file it replaces, else 0666 less the umask (what
    ``open()`` would give)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        pass
    try:
        with open("/proc/self/status") as status:  # Linux: read the umask without changing it
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def temp_target_name(name: str) -> str | None:
    """The file name an :func:`atomic_write` temp file called ``name`` was to become (``.NAME.XXXX.tmp``
    -> ``NAME``), or None when ``name`` is not such a temp file. Lets callers clean up after writers
    that were killed mid-write."""
    if not (name.startswith(".") and name.endswith(_TEMP_SUFFIX)):
        return None
    target, dot, random_part = name[1:-len(_TEMP_SUFFIX)].rpartition(".")
    return target if dot and target and random_part else None


def replace_checked(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """``os.replace(tmp, path)`` after :func:`check_output_file` (for writers with their own temp files)."""
    os.replace(tmp, check_output_file(path))


# ------------------------------------------------------------------------ what an output may replace

class OutputPathError(OSError, ValueError):
    """An output path the tool refuses to write: it holds something the tool did not write, or
    something that cannot take the output (a device, a fifo, a socket, a folder where a file goes, a
    file where a folder goes). The message is one line, ``PATH: what is there``. An ``OSError`` (it is
    about the file system) and a ``ValueError`` (it is a bad argument, not a failing disk)."""


_KINDS = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a fifo"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def describe_path(path: str | os.PathLike) -> str | None:
    """What is at ``path``: ``"a regular file"``, ``"a folder"``, ``"a character device"``, ``"a
    fifo"``, ..., ``"a symbolic link to a folder"``, ``"a broken symbolic link"``; None if nothing."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISLNK(st.st_mode):
        return _kind(st.st_mode)
    try:
        return f"a symbolic link to {_kind(os.stat(path).st_mode)}"
    except OSError:
        return "a broken symbolic link"


def _check_ancestors(path: Path) -> None:
    """The nearest existing ancestor of ``path`` must be a folder (else nothing can be created there)."""
    for parent in path.parents:  # a relative path ends at ".", an absolute one at "/"
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise OutputPathError(f"{path}: {parent} is {describe_path(parent)}, not a folder")
            return


def check_output_file(path: str | os.PathLike) -> Path:
    """Returns ``path`` if a file may be written there: nothing there (or a broken link), or a regular
    file (or a link to one), in a place where a folder exists or can be created. Anything else raises
    :class:`OutputPathError` (``PATH: is a fifo, not a regular file; refusing to replace it``)."""
    path = Path(path)
    what = describe_path(path)
    if what in (None, "a broken symbolic link", "a regular file", "a symbolic link to a regular file"):
        _check_ancestors(path)
        return path
    raise OutputPathError(f"{path}: is {what}, not a regular file; refusing to replace it")


@dataclass(frozen=True)
class FolderLayout:
    """What a tool writes into an output folder, so that a folder it wrote before can be recognised.

    ``files``: regular expressions (whole-name match) of the names of the files it writes directly
    in the folder; temp files of :func:`atomic_write` for those names (left by a killed run) count as
    its own too. ``folders``: regular expression of a subfolder name -> that subfolder's layout.
    ``own``: optional ``folder -> names`` of files whose name fits but whose content shows that the
    tool did not write them (e.g. a ``summary.json`` that is not its summary; see :func:`json_keys`).
    """

    tool: str
    files: tuple[str, ...] = ()
    folders: Mapping[str, "FolderLayout"] = field(default_factory=dict)
    own: Callable[[Path], Iterable[str]] | None = None

    def names_file(self, name: str) -> bool:
        target = temp_target_name(name)
        return any(re.fullmatch(p, n) for p in self.files for n in (name, target) if n)

    def folder_layout(self, name: str) -> "FolderLayout | None":
        return next((layout for p, layout in self.folders.items() if re.fullmatch(p, name)), None)


def json_keys(name: str, keys: Iterable[str]) -> Callable[[Path], list[str]]:
    """A :attr:`FolderLayout.own` check: ``name`` in the folder, if there, must be a JSON object with
    all of ``keys`` (the tool's own manifest), else it is reported as not the tool's."""
    wanted = frozenset(keys)

    def check(folder: Path) -> list[str]:
        path = folder / name
        if not path.is_file():
            return []
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return [name]
        return [] if isinstance(doc, dict) and wanted <= doc.keys() else [name]

    return check


def foreign_entries(folder: str | os.PathLike, layout: FolderLayout) -> list[str]:
    """Entries of ``folder`` (relative names, subfolders with a trailing ``/``) that ``layout`` does
    not account for: unknown names, symbolic links, devices, fifos, sockets, files not the tool's own."""
    folder = Path(folder)
    foreign: list[str] = []

    def walk(directory: Path, lay: FolderLayout, prefix: str) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_symlink():
                foreign.append(rel)
            elif entry.is_dir(follow_symlinks=False):
                sub = lay.folder_layout(entry.name)
                if sub is None:
                    foreign.append(rel + "/")
                else:
                    walk(Path(entry.path), sub, rel + "/")
            elif not (entry.is_file(follow_symlinks=False) and lay.names_file(entry.name)):
                foreign.append(rel)
        if lay.own is not None:
            foreign.extend(prefix + name for name in lay.own(directory))

    walk(folder, layout, "")
    return foreign


def _some(names: list[str], most: int = 3) -> str:
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"


def check_output_folder(path: str | os.PathLike, layout: FolderLayout) -> Path:
    """Returns ``path`` if ``layout.tool`` may write its outputs there: nothing there (and a folder can
    be created), an empty folder, or a folder holding only what :func:`foreign_entries` accepts.
    Anything else raises :class:`OutputPathError` naming what is there. Creates nothing."""
    path = Path(path)
    what = describe_path(path)
    if what is None:
        _check_ancestors(path)
        return path
    if not path.is_dir():
        raise OutputPathError(f"{path}: is {what}, not a folder")
    foreign = foreign_entries(path, layout)
    if foreign:
        raise OutputPathError(f"{path}: is a folder holding {_some(foreign)}, which {layout.tool} did not "
                              "write; choose a new or empty folder")
    return path


def prepare_output_folder(path: str | os.PathLike, layout: FolderLayout) -> Path:
    """:func:`check_output_folder`, then creates the folder (and its parents) if needed."""
    path = check_output_folder(path, layout)
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_output_folder(path: str | os.PathLike, layout: FolderLayout) -> None:
    """Deletes a folder ``layout.tool`` wrote (for a tool that must start afresh): only after
    :func:`check_output_folder` accepted it, so nothing else is ever deleted. A link is refused."""
    path = Path(path)
    if path.is_symlink():
        raise OutputPathError(f"{path}: is {describe_path(path)}; refusing to remove it")
    if describe_path(check_output_folder(path, layout)) is None:
        return
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(path)


def _fsync_directory(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=False, allow_nan=True), binary=False)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def encode_image(path: str | os.PathLike, rgb_or_gray: np.ndarray, jpeg_quality: int = 90) -> bytes:
    """Encodes an RGB (H x W x 3) or single-channel image for the file type ``path`` names."""
    ext = Path(path).suffix.lower()
    img = rgb_or_gray
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise ValueError(f"could not encode an image as {ext!r} for {path}")
    return buf.tobytes()


def atomic_save_image(path: str | os.PathLike, rgb_or_gray: np.ndarray, jpeg_quality: int = 90) -> Path:
    return atomic_write_bytes(path, encode_image(path, rgb_or_gray, jpeg_quality))


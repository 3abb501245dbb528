"""The on-disk cache of compiled inference graphs (:mod:`pebal_perception.core.backends`): ONNX graphs,
OpenVINO blobs, TensorRT plans and the auto backend's measured choice.

Graphs are cached on disk (:func:`cache_dir`: ``$PEBAL_CACHE_DIR``, else ``$XDG_CACHE_HOME/pebal``,
else ``~/.cache/pebal``), keyed by the model's weights digest, the network size, the runtime and its
version and the graph's own version. The cache trusts nothing in its folder, since a checksum beside an
entry proves nothing to whoever can write both:

* every entry is signed (HMAC-SHA256 over its key and bytes) with a per-user secret kept outside the
  cache (:func:`cache_key_path`: ``$PEBAL_CACHE_KEY``, else ``$XDG_CONFIG_HOME/pebal/cache-key``, else
  ``~/.config/pebal/cache-key``; made 0600 on first use); an entry whose signature does not match
  (stale, corrupt, planted, another user's) is reported, naming its file, and rebuilt;
* a cache folder that is a symbolic link, not owned by the user or writable by group or others is not
  used at all, nor a key that is not a private 0600 file of the user or that lies inside the cache: the
  graph is then built in memory, reported ("running without it");
* a cache file that is not a regular file of the user (symbolic link, FIFO, device) or is larger than
  its kind may be is refused without being read;
* entries are written atomically, mode 0600, in a folder created 0700; an auto-backend choice
  (``.choice``) is also checked by schema; the cache keeps at most :data:`CACHE_MAX_ENTRIES` entries and
  :data:`CACHE_MAX_BYTES` (native-size engines add one per image size), the least recently used going first;
* an entry is looked up, built and written under a per-entry lock (``flock``), so two cold starts
  measure the auto backend once: the second waits and takes the first one's choice;
* ONNX graphs with external data (tensors read from other files) are refused by every runner.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import time
from pathlib import Path
from typing import Any, Callable, Iterator

LOG = logging.getLogger("pebal.backends")
CACHE_MAX_ENTRIES = 64  # graphs (and choices) kept on disk; a native-size engine adds one per image size
CACHE_MAX_BYTES = 4 << 30  # all entries together; the entry just written is always kept
CACHE_LOCK_WAIT_S = 600.0  # how long to wait for another process building the same entry, then build anyway


def cache_dir() -> Path:
    """Where compiled graphs are kept (module docstring)."""
    if os.environ.get("PEBAL_CACHE_DIR"):
        return Path(os.environ["PEBAL_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "pebal"


def cache_key_path() -> Path:
    """The per-user secret the cache entries are signed with (``$PEBAL_CACHE_KEY``, else in the
    configuration folder): not in the cache, so that whoever can write the cache still cannot sign an
    entry."""
    if os.environ.get("PEBAL_CACHE_KEY"):
        return Path(os.environ["PEBAL_CACHE_KEY"])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "pebal" / "cache-key"


class CacheRefused(Exception):
    """The cache folder or its key cannot be trusted or used: the graph is built in memory instead."""


class EntryRefused(Exception):
    """One cache entry that cannot be trusted: it is rebuilt."""


_ENTRY_NAME = re.compile(r"([0-9a-f]{32})\.(json|onnx|ovblob|plan|choice|lock)")
_TEMP_NAME = re.compile(r"\.[0-9a-f]{32}\.(json|onnx|ovblob|plan|choice)\.[0-9a-f]{16}\.tmp")
_GRAPH_MAX_BYTES = 2 << 30  # ONNX's own limit (one protobuf): ample for our graphs and their compiled forms
_MAX_BYTES = {".json": 1 << 20, ".choice": 64 << 10}
_KEY_BYTES = 32
_ABANDONED_AFTER_S = 86400.0  # a temp or lock file untouched this long belongs to a build that died


def cached(key: dict[str, Any], suffix: str, build: Callable[[], bytes], directory: Path | None = None,
            validate: Callable[[bytes], None] | None = None) -> bytes:
    """The bytes cached under ``key`` (a JSON-able description), else ``build()``'s, stored signed (module
    docstring). An entry that is not signed with this user's key, not a plain file of the user, too large,
    or that ``validate`` rejects (ValueError) is reported and rebuilt; a cache folder or key that cannot be
    trusted, or a cache that cannot be written, is reported and skipped (the graph is still used)."""
    try:
        directory = cache_dir() if directory is None else directory
        key_path = cache_key_path()
    except RuntimeError as exc:  # no home folder (a system user): nowhere to keep a cache
        LOG.warning("cannot place the graph cache (%s): running without it", exc)
        return build()
    try:
        folder = _open_private_folder(directory)
    except (OSError, CacheRefused) as exc:
        LOG.warning("cannot use the graph cache %s (%s): running without it", directory, exc)
        return build()
    try:
        try:
            secret = _secret_key(key_path, directory)
        except (OSError, CacheRefused) as exc:
            LOG.warning("cannot use the graph cache key %s (%s): running without it", key_path, exc)
            return build()
        return _lookup_or_build(folder, directory, key, suffix, secret, build, validate)
    finally:
        os.close(folder)


def _lookup_or_build(folder: int, directory: Path, key: dict[str, Any], suffix: str, secret: bytes,
                     build: Callable[[], bytes], validate: Callable[[bytes], None] | None) -> bytes:
    """:func:`_cached` in the trusted cache folder ``folder`` (``directory``), under the entry's lock."""
    text = json.dumps(key, sort_keys=True)
    name = hashlib.sha256(text.encode()).hexdigest()[:32]
    entry = directory / f"{name}{suffix}"
    with _entry_lock(folder, directory / f"{name}.lock"):
        try:
            data = _load_entry(folder, directory, name, suffix, text, secret)
            if data is not None:
                if validate is not None:
                    validate(data)
                _mark_used(folder, f"{name}.json")
                return data
        except EntryRefused as exc:  # each reason names the file at fault
            LOG.warning("graph cache entry refused, rebuilding it: %s", exc)
        except ValueError as exc:
            LOG.warning("graph cache entry refused, rebuilding it: %s holds no valid value (%s)", entry, exc)
        except OSError as exc:
            LOG.warning("graph cache entry refused, rebuilding it: %s cannot be read (%s)", entry, exc)
        data = build()
        try:
            _store_entry(folder, name, suffix, key, text, secret, data)
            _prune(folder, keep=name)
        except OSError as exc:
            LOG.warning("cannot write the graph cache %s (%s): running without it", directory, exc)
        return data


def _open_private_folder(path: Path) -> int:
    """A descriptor of folder ``path``, made (0700) when missing; CacheRefused when it is a symbolic link,
    not the user's, or writable by group or others (anyone who can write it could replace its files)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.is_symlink():
        raise CacheRefused(f"{path} is a symbolic link")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise CacheRefused(f"{path} belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()})")
        if info.st_mode & 0o022:
            raise CacheRefused(f"{path} is writable by others ({stat.filemode(info.st_mode)})")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _secret_key(path: Path, cache: Path) -> bytes:
    """This user's signing key (``path``: :func:`cache_key_path`), created on first use; CacheRefused when
    it is not a private file of the user, or lies inside the cache folder (where its writers could replace
    it)."""
    cache_real, key_real = cache.resolve(), path.resolve()
    if key_real == cache_real or cache_real in key_real.parents:
        raise CacheRefused(f"the key {path} lies inside the cache folder {cache}")
    folder = _open_private_folder(path.parent)
    try:
        try:
            key = _read_plain_file(folder, path, _KEY_BYTES, private=True)
        except FileNotFoundError:
            _create_key(folder, path.name)
            key = _read_plain_file(folder, path, _KEY_BYTES, private=True)
    except EntryRefused as exc:
        raise CacheRefused(str(exc)) from None
    finally:
        os.close(folder)
    if len(key) != _KEY_BYTES:
        raise CacheRefused(f"{path} holds {len(key)} bytes, not a key of {_KEY_BYTES}")
    return key


def _create_key(folder: int, name: str) -> None:
    """A new random key ``name`` in ``folder``, complete before it appears (linked from a temp file: when
    another process makes one at the same time, the first one stays and both use it)."""
    temp = f".{name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=folder)
    try:
        try:
            os.fchmod(fd, 0o600)
            _write_all(fd, secrets.token_bytes(_KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(temp, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
        os.fsync(folder)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=folder)


def _read_plain_file(folder: int, path: Path, max_bytes: int, private: bool = False) -> bytes:
    """The bytes of ``path`` (named in ``folder``), read only when it is a regular file of the user that
    others cannot write (``private``: nor read) and holds at most ``max_bytes``: a symbolic link, FIFO,
    device or huge file is refused unread (EntryRefused); FileNotFoundError when there is none."""
    info = os.stat(path.name, dir_fd=folder, follow_symlinks=False)
    _check_plain_file(info, path, max_bytes, 0o077 if private else 0o022)
    fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                 dir_fd=folder)
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise EntryRefused(f"{path} was replaced while being opened")
        chunks, size = [], 0
        while size <= opened.st_size:  # one read, as a rule; a file that grows meanwhile is refused
            chunk = os.read(fd, opened.st_size + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size != opened.st_size:
        raise EntryRefused(f"{path} changed while being read")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _check_plain_file(info: os.stat_result, path: Path, max_bytes: int, forbidden_mode: int) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise EntryRefused(f"{path} is a symbolic link")
    if not stat.S_ISREG(info.st_mode):
        raise EntryRefused(f"{path} is not a regular file ({stat.filemode(info.st_mode)})")
    if info.st_uid != os.geteuid():
        raise EntryRefused(f"{path} belongs to uid {info.st_uid}, not to this user")
    if info.st_mode & forbidden_mode:
        raise EntryRefused(f"{path} is open to others ({stat.filemode(info.st_mode)})")
    if info.st_size > max_bytes:
        raise EntryRefused(f"{path} holds {info.st_size} bytes, more than the {max_bytes} it may")


def _entry_mac(secret: bytes, suffix: str, text: str, data: bytes) -> str:
    """The signature of an entry: its kind, its key (length first: no two keys and data run together) and
    its bytes."""
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    mac.update(f"pebal-graph-cache 2 {suffix}\n".encode())
    mac.update(len(text.encode()).to_bytes(8, "big") + text.encode())
    mac.update(data)
    return mac.hexdigest()


def _load_entry(folder: int, directory: Path, name: str, suffix: str, text: str, secret: bytes) -> bytes | None:
    """The signed bytes of entry ``name`` (``name.json`` describes ``name + suffix``), None when there is
    none; EntryRefused when it is incomplete, not a plain file of the user, too large or not signed by
    this user's key for this very key."""
    try:
        meta = _read_plain_file(folder, directory / f"{name}.json", _MAX_BYTES[".json"])
    except FileNotFoundError:
        if _exists(folder, f"{name}{suffix}"):
            raise EntryRefused(f"{directory / name}.json, its description, is missing") from None
        return None
    try:
        data = _read_plain_file(folder, directory / f"{name}{suffix}", _MAX_BYTES.get(suffix, _GRAPH_MAX_BYTES))
    except FileNotFoundError:
        raise EntryRefused(f"{directory / name}{suffix} is missing") from None
    try:
        signature = json.loads(meta).get("mac")
    except (ValueError, RecursionError, AttributeError):
        raise EntryRefused(f"{directory / name}.json is not a description of an entry") from None
    if not isinstance(signature, str) or not hmac.compare_digest(signature.encode(),
                                                                 _entry_mac(secret, suffix, text, data).encode()):
        raise EntryRefused(f"{directory / name}{suffix} is stale or corrupt, or not written by this user "
                           "(its signature does not match)")
    return data


def _exists(folder: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _store_entry(folder: int, name: str, suffix: str, key: dict[str, Any], text: str, secret: bytes,
                 data: bytes) -> None:
    """Writes the entry's bytes, then its signed description (a reader finds both or no valid entry)."""
    _write_private(folder, f"{name}{suffix}", data)
    meta = {"format": "pebal-graph-cache", "version": 2, "key": key, "bytes": len(data),
            "mac": _entry_mac(secret, suffix, text, data)}
    _write_private(folder, f"{name}.json", json.dumps(meta, indent=1).encode())
    _mark_used(folder, f"{name}.json")
    os.fsync(folder)  # makes the renames durable


def _write_private(folder: int, name: str, data: bytes) -> None:
    """``data`` to ``name`` in ``folder`` atomically (a temp file renamed over it), mode 0600: a graph can
    hold what the model was built from, for this user only."""
    temp = f".{name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=folder)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask could only have taken bits away; this says it exactly
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=folder)
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _mark_used(folder: int, name: str) -> None:
    """Entries are kept by last use (:func:`_prune`): the description's mtime says when, from this clock
    (the file system's may be coarser than two uses apart)."""
    now = time.time_ns()
    with contextlib.suppress(OSError):  # a read-only cache still serves its entries
        os.utime(name, ns=(now, now), dir_fd=folder, follow_symlinks=False)


@contextlib.contextmanager
def _entry_lock(folder: int, path: Path) -> Iterator[None]:
    """Holds ``path`` (a lock file in ``folder``) exclusively, so one process at a time looks up, builds
    and writes an entry: two cold starts then measure the auto backend once, not each slowed by the
    other. Waits at most :data:`CACHE_LOCK_WAIT_S` (a process that dies lets go at once); without a lock
    file (refused, cannot be made) it goes on unlocked."""
    import fcntl

    try:
        fd = os.open(path.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600,
                     dir_fd=folder)
    except OSError as exc:
        LOG.warning("cannot lock the cache entry %s (%s): going on without the lock", path, exc)
        yield
        return
    try:
        try:
            _check_plain_file(os.fstat(fd), path, 0, 0o022)
            _wait_for_lock(fd, path, fcntl)
        except EntryRefused as exc:
            LOG.warning("cannot lock the cache entry (%s): going on without the lock", exc)
        yield
    finally:
        os.close(fd)  # lets go of the lock


def _wait_for_lock(fd: int, path: Path, fcntl: Any) -> None:
    deadline = time.monotonic() + CACHE_LOCK_WAIT_S
    waiting = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if not waiting:
            LOG.info("waiting for another process that builds the cache entry %s", path.with_suffix(""))
            waiting = True
        if time.monotonic() > deadline:
            LOG.warning("gave up waiting %.0f s for the cache entry %s: building it here too", CACHE_LOCK_WAIT_S,
                        path.with_suffix(""))
            return
        time.sleep(0.05)


def _prune(folder: int, keep: str) -> None:
    """Keeps the cache within :data:`CACHE_MAX_ENTRIES` and :data:`CACHE_MAX_BYTES`, dropping the least
    recently used entries (``keep``, just written, stays), and removes temp and lock files of builds that
    died. Only files named as this module names them, plain files of the user, are ever removed."""
    now = time.time()
    entries: dict[str, dict[str, Any]] = {}
    for name in os.listdir(folder):
        try:
            info = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:  # removed meanwhile by another process
            continue
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            continue  # not written by this module: left alone
        if _TEMP_NAME.fullmatch(name):
            if now - info.st_mtime > _ABANDONED_AFTER_S:
                _remove(folder, [name])
            continue
        match = _ENTRY_NAME.fullmatch(name)
        if match is None:
            continue
        stem, kind = match.groups()
        entry = entries.setdefault(stem, {"files": [], "bytes": 0, "used": None, "touched": 0.0})
        entry["files"].append(name)
        entry["bytes"] += info.st_size
        entry["touched"] = max(entry["touched"], info.st_mtime)
        if kind == "json":
            entry["used"] = info.st_mtime_ns
    count, total = 1, entries.get(keep, {"bytes": 0})["bytes"]
    by_use = sorted((e["used"], stem) for stem, e in entries.items() if e["used"] is not None and stem != keep)
    for _, stem in reversed(by_use):  # the most recently used first
        count, total = count + 1, total + entries[stem]["bytes"]
        if count > CACHE_MAX_ENTRIES or total > CACHE_MAX_BYTES:
            _remove(folder, sorted(entries[stem]["files"], key=lambda n: not n.endswith(".json")))
            count, total = count - 1, total - entries[stem]["bytes"]
    for stem, entry in entries.items():  # no description: a lock or graph of a build that died
        if entry["used"] is None and stem != keep and now - entry["touched"] > _ABANDONED_AFTER_S:
            _remove(folder, entry["files"])


def _remove(folder: int, names: list[str]) -> None:
    for name in names:  # the description first: a reader then sees no entry rather than half of one
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=folder)

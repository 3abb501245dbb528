"""The run folder of ``pebal-finetune``: its layout, the step checkpoints and the run log.

``<output>/checkpoints/step_<global step>.pt`` are written atomically; a killed write leaves at most a
temp file that no reader matches. ``train_log.jsonl`` holds one JSON line per optimiser step.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from torch import nn

from pebal_perception.core.checkpoint import ModelMeta, _torch_load, is_pebal_checkpoint, save_checkpoint
from pebal_perception.core.io import FolderLayout, atomic_write, temp_target_name
from pebal_perception.core.models.common import CheckpointError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_CKPT_RE = re.compile(r"^step_(\d{9})\.pt$")
# What a run writes into its folder: a folder holding only these is a run folder (a config.yaml with no
# train_log.jsonl beside it is the user's own, e.g. the --config file, and is never replaced).
RUN_FOLDER = FolderLayout(
    "pebal-finetune", files=(r"config\.yaml", r"train_log\.jsonl", r"metrics\.json", r"model_final\.pt"),
    folders={CHECKPOINT_DIR: FolderLayout("pebal-finetune", files=(_CKPT_RE.pattern,)),
             "tensorboard": FolderLayout("pebal-finetune", files=(r"events\.out\.tfevents\..+",))},
    own=lambda d: ["config.yaml"] if (d / "config.yaml").exists() and not (d / "train_log.jsonl").exists() else [])


def checkpoint_path(run_dir: Path, global_step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{global_step:09d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temp files of interrupted writes never match)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _CKPT_RE.match(p.name) and p.is_file())


def save_training_checkpoint(run_dir: Path, global_step: int, model: nn.Module, meta: ModelMeta,
                             training_state: dict[str, Any], keep: int = 0) -> Path:
    """Writes ``step_<global_step>.pt`` atomically (temp file + rename), then prunes all but the
    newest ``keep`` checkpoints (0 = keep all). Killed at any point, the folder holds the previous
    checkpoints intact plus, at worst, a temp file that no reader matches (removed on resume)."""
    path = checkpoint_path(run_dir, global_step)
    try:
        save_checkpoint(path, model, meta, extra={"training_state": training_state})
    except OSError as exc:  # e.g. a full disk: name the file the save was for (the temp file is gone)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def remove_interrupted_writes(run_dir: Path) -> list[Path]:
    """Deletes temp files that killed checkpoint writes left in ``<run_dir>/checkpoints``."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if _CKPT_RE.match(temp_target_name(p.name) or "") and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    obj = _torch_load(path)
    if not is_pebal_checkpoint(obj) or not isinstance(obj.get("training_state"), dict):
        raise CheckpointError(f"{path}: not a resumable pebal-finetune checkpoint (no training_state)")
    return obj


def find_resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of ``run_dir`` that loads completely (unreadable ones are skipped)."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            load_training_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping %s", exc)
            continue
        return path
    return None


class RunLog:
    """``train_log.jsonl`` of rank 0, truncated to the resumed step so it matches the weights."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        lines = []
        if resume_step > 0 and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] < resume_step:
                        lines.append(line)
                except (ValueError, KeyError, TypeError):
                    continue
        atomic_write(path, lambda f: f.write("".join(f"{line}\n" for line in lines)), binary=False)
        self.file = open(path, "a")

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()

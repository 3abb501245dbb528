"""What the commands may replace at their output paths (``pebal_perception.core.io``'s rule).

Every command gets the dangerous targets first: a folder holding a user's file, a fifo, a device node
(``/dev/null``'s twin, made with ``mknod`` when running as root), and a plain file where a folder is
expected. Each is refused with one line ``prog: error: PATH: what is there`` and a non-zero exit, before
any model is loaded (the checkpoint named is missing, and the error is about the output), and is left
exactly as it was. Then the happy paths the rule keeps: re-running into a folder the tool wrote, and
``--overwrite`` of a bag the tool wrote.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from pebal_perception.core.io import (FolderLayout, OutputPathError, atomic_write_bytes, check_output_file,
                                      check_output_folder, json_keys, remove_output_folder)

from tiny_models import TINY, write_tiny_checkpoint

USER_DATA = b"the user's data"
KINDS = ("user_dir", "fifo", "device", "file")


def _make_target(base: Path, kind: str) -> Path:
    """A dangerous output target of ``kind`` under ``base`` (skips the device where mknod is refused)."""
    path = base / f"target_{kind}"
    if kind == "user_dir":
        path.mkdir()
        (path / "x").write_bytes(USER_DATA)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the numbers of /dev/null
        except (PermissionError, OSError) as exc:
            pytest.skip(f"cannot create a device node here: {exc}")
    elif kind == "file":
        path.write_bytes(USER_DATA)
    return path


def _assert_kept(path: Path, kind: str) -> None:
    mode = os.lstat(path).st_mode
    if kind == "user_dir":
        assert stat.S_ISDIR(mode) and sorted(os.listdir(path)) == ["x"]
        assert (path / "x").read_bytes() == USER_DATA
    elif kind == "fifo":
        assert stat.S_ISFIFO(mode)
    elif kind == "device":
        assert stat.S_ISCHR(mode) and os.lstat(path).st_rdev == os.makedev(1, 3)
    else:
        assert stat.S_ISREG(mode) and path.read_bytes() == USER_DATA
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}")]
    assert not leftovers, leftovers


def _assert_one_line(capsys, rc: int, prog: str, path: Path) -> str:
    err = capsys.readouterr().err.strip()
    assert rc != 0, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"{prog}: error: {path}: "), err
    return err


@pytest.fixture
def target(request, tmp_path):
    kind = request.param
    return kind, _make_target(tmp_path, kind)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", threshold=-2.9)


def _write_image(path: Path, h: int = 32, w: int = 64) -> Path:
    import cv2

    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    return path


# ------------------------------------------------------------------------------------------------ core


@pytest.mark.parametrize("kind", ["fifo", "device", "user_dir"])
def test_atomic_write_refuses_what_is_not_a_regular_file(tmp_path, kind):
    path = _make_target(tmp_path, kind)
    with pytest.raises(OutputPathError, match=f"^{path}: is a .*, not a regular file"):
        atomic_write_bytes(path, b"new")
    _assert_kept(path, kind)


@pytest.mark.parametrize("kind", ["fifo", "user_dir"])
def test_atomic_write_refuses_a_link_to_what_is_not_a_regular_file(tmp_path, kind):
    real = _make_target(tmp_path, kind)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(OutputPathError, match="is a symbolic link to a"):
        atomic_write_bytes(link, b"new")
    assert link.is_symlink()
    _assert_kept(real, kind)


def test_atomic_write_replaces_regular_files_and_links_to_them(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"old")
    atomic_write_bytes(plain, b"new")
    assert plain.read_bytes() == b"new"
    real, link = tmp_path / "real", tmp_path / "link"
    real.write_bytes(USER_DATA)
    link.symlink_to(real)
    atomic_write_bytes(link, b"new")
    assert not link.is_symlink() and link.read_bytes() == b"new"
    assert real.read_bytes() == USER_DATA  # the file the link pointed to is left as it was


def test_a_file_where_a_folder_goes_is_refused(tmp_path):
    blocker = _make_target(tmp_path, "file")
    expected = f"^{blocker / 'a' / 'b.json'}: {blocker} is a regular file, not a folder"
    with pytest.raises(OutputPathError, match=expected):
        atomic_write_bytes(blocker / "a" / "b.json", b"{}")
    with pytest.raises(OutputPathError, match="not a folder"):
        check_output_folder(blocker, FolderLayout("tool"))
    _assert_kept(blocker, "file")


def test_folder_rule(tmp_path):
    layout = FolderLayout("tool", files=(r".+\.png", r"summary\.json"),
                          folders={"sub": FolderLayout("tool", files=(r".+\.npy",))},
                          own=json_keys("summary.json", ("frames",)))
    assert check_output_folder(tmp_path / "new", layout) == tmp_path / "new"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    ours = tmp_path / "ours"
    (ours / "sub").mkdir(parents=True)
    for name in ("a.png", ".a.png.x1y2.tmp", "sub/b.npy"):  # a temp file of a killed write counts as ours
        (ours / name).write_bytes(b"")
    (ours / "summary.json").write_text(json.dumps({"frames": []}))
    check_output_folder(ours, layout)
    for name, content in (("summary.json", "[]"), ("notes.txt", ""), ("sub/c.png", "")):
        probe = tmp_path / f"probe_{len(content)}_{name.replace('/', '_')}"
        (probe / "sub").mkdir(parents=True)
        (probe / name).write_text(content)
        with pytest.raises(OutputPathError, match=f"holding {name}, which tool did not write"):
            check_output_folder(probe, layout)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "a.png").symlink_to(tmp_path / "ours" / "a.png")  # the tool never writes links
    with pytest.raises(OutputPathError, match="holding a.png"):
        check_output_folder(linked, layout)


def test_remove_output_folder_removes_only_a_folder_of_the_tool(tmp_path):
    from pebal_training.run_folder import RUN_FOLDER

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("a: 1\n")
    (run / "train_log.jsonl").write_text("")
    (run / "checkpoints" / "step_000000002.pt").write_bytes(b"")
    foreign = run / "checkpoints" / "my_notes.txt"
    foreign.write_bytes(USER_DATA)
    with pytest.raises(OutputPathError, match="checkpoints/my_notes.txt"):
        remove_output_folder(run, RUN_FOLDER)
    assert foreign.read_bytes() == USER_DATA and (run / "config.yaml").is_file()
    foreign.unlink()
    link = tmp_path / "link"
    link.symlink_to(run)
    with pytest.raises(OutputPathError, match="symbolic link"):
        remove_output_folder(link, RUN_FOLDER)
    remove_output_folder(run, RUN_FOLDER)
    assert not run.exists()
    remove_output_folder(run, RUN_FOLDER)  # absent: nothing to do


def test_a_users_config_in_the_run_folder_is_not_the_runs(tmp_path):
    from pebal_training.run_folder import RUN_FOLDER

    (tmp_path / "config.yaml").write_text("# my config\n")
    with pytest.raises(OutputPathError, match="holding config.yaml"):
        check_output_folder(tmp_path, RUN_FOLDER)
    (tmp_path / "train_log.jsonl").write_text("")  # beside a run's log it is the run's own
    check_output_folder(tmp_path, RUN_FOLDER)


def test_check_output_file(tmp_path):
    assert check_output_file(tmp_path / "new.pt") == tmp_path / "new.pt"
    (tmp_path / "old.pt").write_bytes(b"")
    check_output_file(tmp_path / "old.pt")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    check_output_file(tmp_path / "dangling")
    with pytest.raises(OutputPathError, match="is a folder"):
        check_output_file(tmp_path)


# ------------------------------------------------------------------------------------------- pebal-bag


@pytest.fixture(scope="module")
def input_bag(tmp_path_factory) -> Path:
    pytest.importorskip("rosbags")
    from pebal_training.recipes.drive_bag import write_drive_bag

    bag = tmp_path_factory.mktemp("bags") / "drive"
    write_drive_bag(bag, frames=2, size=(64, 32), seed=1)
    return bag


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_bag_process_overwrite_refuses_what_it_did_not_write(capsys, input_bag, target, tmp_path):
    from pebal_perception.cli import bag as bag_cli

    kind, path = target
    for extra in (["--overwrite"], []):
        rc = bag_cli.main(["process", str(input_bag), "-o", str(path), *extra,
                           "--checkpoint", str(tmp_path / "missing.pt")])
        err = _assert_one_line(capsys, rc, "pebal-bag", path)
        assert "missing.pt" not in err  # refused before the model is loaded
        _assert_kept(path, kind)


def _own_bag(path: Path, summary: str = "summary.json", **keys) -> Path:
    from pebal_perception.core.bag import AtomicBagWriter

    with AtomicBagWriter(path, summary=summary) as writer:
        writer.add_topic("/x", "std_msgs/msg/String")
        writer.commit(extra_files={summary: json.dumps(
            keys or {"input_bag": "in", "output_bag": str(path), "output_topics": {}})})
    return path


def test_bag_writer_overwrite_replaces_only_its_own_bag(tmp_path, input_bag):
    from pebal_perception.core.bag import AtomicBagWriter, BagError

    out = _own_bag(tmp_path / "out")
    with AtomicBagWriter(out, overwrite=True) as writer:
        writer.add_topic("/y", "std_msgs/msg/String")
        writer.commit(extra_files={"summary.json": json.dumps({"input_bag": "again", "output_bag": str(out),
                                                               "output_topics": {}})})
    assert json.loads((out / "summary.json").read_text())["input_bag"] == "again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folder left

    # a recorded bag (no summary of ours), a bag with a user's file in it, a summary that is not ours,
    # a link to a bag: all refused and left as they were
    (out / "notes.txt").write_bytes(USER_DATA)
    with pytest.raises(BagError, match="holding notes.txt besides its own files"):
        AtomicBagWriter(out, overwrite=True)
    assert (out / "notes.txt").read_bytes() == USER_DATA
    with pytest.raises(BagError, match="holding drive.json besides its own files"):
        AtomicBagWriter(input_bag, overwrite=True)  # the drive recipe's bag is not pebal-bag process's
    assert (input_bag / "drive.json").is_file() and (input_bag / "metadata.yaml").is_file()
    with AtomicBagWriter(tmp_path / "recorded") as writer:  # like `ros2 bag record`: no summary
        writer.add_topic("/x", "std_msgs/msg/String")
    recorded = sorted(os.listdir(tmp_path / "recorded"))
    with pytest.raises(BagError, match="a bag without the summary.json this tool writes"):
        AtomicBagWriter(tmp_path / "recorded", overwrite=True)
    assert sorted(os.listdir(tmp_path / "recorded")) == recorded == ["metadata.yaml", "recorded.db3"]
    foreign = _own_bag(tmp_path / "foreign", frames=[])
    with pytest.raises(BagError, match="summary.json is not this tool's"):
        AtomicBagWriter(foreign, overwrite=True)
    link = tmp_path / "link"
    link.symlink_to(_own_bag(tmp_path / "real"))
    with pytest.raises(BagError, match="symbolic link to a folder"):
        AtomicBagWriter(link, overwrite=True)
    assert link.is_symlink() and (tmp_path / "real" / "metadata.yaml").is_file()
    assert not [p.name for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_bag_writer_rechecks_at_commit(tmp_path):
    """A file dropped into the old bag while the new one is being written stops the replacement."""
    from pebal_perception.core.bag import AtomicBagWriter, BagError

    out = _own_bag(tmp_path / "out")
    writer = AtomicBagWriter(out, overwrite=True)
    writer.add_topic("/y", "std_msgs/msg/String")
    (out / "late.txt").write_bytes(USER_DATA)
    with pytest.raises(BagError, match="late.txt"):
        with writer:
            writer.commit(extra_files={"summary.json": "{}"})
    assert (out / "late.txt").read_bytes() == USER_DATA and (out / "metadata.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_bag_process_overwrite_replaces_its_own_output(capsys, input_bag, tiny_checkpoint, tmp_path):
    from pebal_perception.cli import bag as bag_cli

    out = tmp_path / "processed"
    argv = ["process", str(input_bag), "-o", str(out), "--checkpoint", str(tiny_checkpoint), "--device", "cpu",
            "-q"]
    assert bag_cli.main(argv) == 0, capsys.readouterr().err
    assert bag_cli.main(argv) == 1 and "exists already" in capsys.readouterr().err
    first = (out / "summary.json").read_text()
    assert bag_cli.main(argv + ["--overwrite"]) == 0, capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["frames_out"] == json.loads(first)["frames_out"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed"]


@pytest.mark.parametrize("target", ["user_dir", "fifo", "device"], indirect=True)
def test_drive_bag_recipe_refuses_what_it_did_not_write(capsys, target):
    pytest.importorskip("rosbags")
    from pebal_training.recipes import drive_bag

    kind, path = target
    rc = drive_bag.main(["-o", str(path), "--overwrite", "--frames", "1", "--size", "32x16", "-q"])
    _assert_one_line(capsys, rc, "drive_bag", path)
    _assert_kept(path, kind)


# ---------------------------------------------------------------------------------------- pebal-detect


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_detect_refuses_what_it_did_not_write(capsys, tmp_path, target):
    from pebal_perception.cli import detect

    kind, path = target
    image = _write_image(tmp_path / "frame.png")
    rc = detect.main([str(image), "-o", str(path), "--checkpoint", str(tmp_path / "missing.pt")])
    assert "missing.pt" not in _assert_one_line(capsys, rc, "pebal-detect", path)
    _assert_kept(path, kind)


def test_detect_reruns_into_its_own_folder_only(capsys, tmp_path, tiny_checkpoint):
    from pebal_perception.cli import detect

    image = _write_image(tmp_path / "frame.png")
    out = tmp_path / "out"
    argv = [str(image), "-o", str(out), "--checkpoint", str(tiny_checkpoint)]
    assert detect.main(argv) == 0
    assert detect.main(argv) == 0  # its own folder: the files of the same name are replaced
    assert json.loads((out / "summary.json").read_text())["num_frames"] == 1
    (out / "summary.json").write_text(json.dumps({"mine": True}))  # a summary.json that is not ours
    capsys.readouterr()
    rc = detect.main(argv)
    assert "summary.json, which pebal-detect did not write" in _assert_one_line(capsys, rc, "pebal-detect", out)
    assert json.loads((out / "summary.json").read_text()) == {"mine": True}


# ------------------------------------------------------------------------------------------ pebal-eval


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_eval_refuses_what_it_did_not_write(capsys, tmp_path, target):
    from pebal_training.cli import evaluate as eval_cli

    kind, path = target
    rc = eval_cli.main(["--checkpoint", str(tmp_path / "missing.pt"), "--dataset", "fishyscapes_static",
                        "--root", str(tmp_path / "no_data"), "-o", str(path), "--quiet"])
    err = _assert_one_line(capsys, rc, "pebal-eval", path)
    assert "missing.pt" not in err and "no_data" not in err  # before data and model
    _assert_kept(path, kind)


def test_eval_reruns_into_its_own_folder(capsys, tmp_path, tiny_checkpoint):
    from pebal_training.cli import evaluate as eval_cli
    from pebal_training.data import synthetic_layouts as SL

    SL.write_fishyscapes(tmp_path / "data", "Static", n=2, seed=7, size=(64, 32))
    out = tmp_path / "out"
    argv = ["--checkpoint", str(tiny_checkpoint), "--dataset", "fishyscapes_static", "--root",
            str(tmp_path / "data"), "-o", str(out), "--quiet", "--worst", "1"]
    assert eval_cli.main(argv) == 0, capsys.readouterr().err
    assert eval_cli.main(argv) == 0, capsys.readouterr().err
    worst = next((out / "worst").iterdir())
    worst.unlink()
    os.mkfifo(worst)  # a fifo where a worst-frame panel goes
    capsys.readouterr()
    rc = eval_cli.main(argv)
    assert f"worst/{worst.name}" in _assert_one_line(capsys, rc, "pebal-eval", out)
    assert stat.S_ISFIFO(os.lstat(worst).st_mode)


# ---------------------------------------------------------------------------------------- pebal-export


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_export_folder_refuses_what_it_did_not_write(capsys, tmp_path, target):
    from pebal_training.cli import export as export_cli

    kind, path = target
    rc = export_cli.main(["--checkpoint", str(tmp_path / "missing.pt"), "-o", str(path), "--format", "onnx"])
    assert "missing.pt" not in _assert_one_line(capsys, rc, "pebal-export", path)
    _assert_kept(path, kind)


@pytest.mark.parametrize("target", ["user_dir", "fifo", "device"], indirect=True)
def test_export_checkpoint_file_refuses_what_is_not_a_regular_file(capsys, tmp_path, target):
    from pebal_training.cli import export as export_cli

    kind, path = target
    rc = export_cli.main(["--checkpoint", str(tmp_path / "missing.pt"), "-o", str(path), "--format", "pebal"])
    assert "missing.pt" not in _assert_one_line(capsys, rc, "pebal-export", path)
    _assert_kept(path, kind)


def test_export_never_replaces_a_users_checkpoint_beside_it(capsys, tmp_path, tiny_checkpoint):
    """``pebal-export --checkpoint models/tiny.pt -o models`` would write models/tiny.pt: refused."""
    from pebal_training.cli import export as export_cli

    models = tmp_path / "models"
    models.mkdir()
    source = models / "tiny.pt"
    source.write_bytes(tiny_checkpoint.read_bytes())
    rc = export_cli.main(["--checkpoint", str(source), "-o", str(models), "--format", "torchscript"])
    assert "tiny.pt, which pebal-export did not write" in _assert_one_line(capsys, rc, "pebal-export", models)
    assert source.read_bytes() == tiny_checkpoint.read_bytes()
    out = tmp_path / "export"
    argv = ["--checkpoint", str(source), "-o", str(out), "--format", "torchscript"]
    assert export_cli.main(argv) == 0 and export_cli.main(argv) == 0  # its own folder: re-export
    assert sorted(p.name for p in out.iterdir()) == ["tiny.json", "tiny.pt"]


# ------------------------------------------------------------------------------------- pebal-calibrate


@pytest.mark.parametrize("target", ["user_dir", "fifo", "device"], indirect=True)
def test_calibrate_writes_only_regular_files(capsys, tmp_path, target, tiny_checkpoint):
    from pebal_training.cli import calibrate

    kind, path = target
    common = ["--dataset", "fishyscapes_static", "--root", str(tmp_path / "no_data"), "--quiet"]
    rc = calibrate.main(["--checkpoint", str(tiny_checkpoint), "--output-checkpoint", str(path), *common])
    assert "no_data" not in _assert_one_line(capsys, rc, "pebal-calibrate", path)  # before any work
    _assert_kept(path, kind)
    rc = calibrate.main(["--checkpoint", str(path), *common])  # in place
    _assert_one_line(capsys, rc, "pebal-calibrate", path)
    _assert_kept(path, kind)


# ---------------------------------------------------------------------------------------- pebal-synth


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_synth_refuses_what_it_did_not_write(capsys, target):
    from pebal_training.cli.synth import main as synth_main

    kind, path = target
    rc = synth_main(["--output", str(path), "--count", "1", "--size", "32x16", "-q"])
    _assert_one_line(capsys, rc, "pebal-synth", path)
    _assert_kept(path, kind)


def test_synth_reruns_into_its_own_folder_only(capsys, tmp_path):
    from pebal_training.cli.synth import main as synth_main

    out = tmp_path / "synth"
    argv = ["--output", str(out), "--count", "2", "--size", "32x16", "-q"]
    assert synth_main(argv) == 0 and synth_main(argv) == 0
    (out / "scenes.json").write_bytes(USER_DATA)
    rc = synth_main(argv)
    assert "scenes.json, which pebal-synth did not write" in _assert_one_line(capsys, rc, "pebal-synth", out)
    assert (out / "scenes.json").read_bytes() == USER_DATA


# ------------------------------------------------------------------------------------- pebal-finetune


def _finetune_args(output: Path) -> list[str]:
    return ["--output", str(output), f"model.name={TINY}", "data.kind=synthetic", "data.synthetic.num_scenes=4",
            "data.synthetic.height=32", "data.synthetic.width=64", "data.crop_size=32", "train.epochs=1",
            "train.batch_size=2", "train.progress=false", "train.tensorboard=false", "validation.kind=none"]


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_finetune_refuses_a_run_folder_it_did_not_write(capsys, target):
    from pebal_training.cli.finetune import main as finetune_main

    kind, path = target
    rc = finetune_main(_finetune_args(path))
    _assert_one_line(capsys, rc, "pebal-finetune", path)
    assert rc == 2
    _assert_kept(path, kind)


def test_finetune_refuses_a_folder_holding_the_users_config(capsys, tmp_path):
    from pebal_training.cli.finetune import main as finetune_main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_bytes(USER_DATA)
    rc = finetune_main(_finetune_args(run))
    assert "config.yaml" in _assert_one_line(capsys, rc, "pebal-finetune", run)
    assert sorted(os.listdir(run)) == ["config.yaml"] and (run / "config.yaml").read_bytes() == USER_DATA


# ---------------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_default_model_recipe_refuses_what_it_did_not_write(capsys, monkeypatch, target):
    from pebal_training.recipes import default_model

    def no_work(*args, **kwargs):
        raise AssertionError("the recipe started working on a refused output")

    monkeypatch.setattr(default_model, "_train", no_work)
    monkeypatch.setattr("pebal_training.data.synthetic_layouts.write_fishyscapes", no_work)
    kind, path = target
    rc = default_model.main(["--output", str(path)])
    _assert_one_line(capsys, rc, "default_model", path)
    _assert_kept(path, kind)


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_cityscapes_smoke_layout_refuses_what_it_did_not_write(target):
    from pebal_training.recipes.cityscapes_smoke import output_layout

    kind, path = target
    with pytest.raises(OutputPathError, match=f"^{path}: "):
        check_output_folder(path, output_layout())
    _assert_kept(path, kind)


def test_recipe_layouts_accept_what_the_recipes_write(tmp_path):
    from pebal_training.recipes import cityscapes_smoke, default_model

    smoke = tmp_path / "smoke"
    frames = smoke / "data" / "cityscapes" / "gtFine" / "train" / "frankfurt"
    frames.mkdir(parents=True)
    (frames / "frankfurt_000000_000294_gtFine_labelTrainIds.png").write_bytes(b"")
    (smoke / "run").mkdir()
    (smoke / "run" / "model_final.pt").write_bytes(b"")
    (smoke / "smoke_metrics.json").write_text("{}")
    check_output_folder(smoke, cityscapes_smoke.output_layout())
    demo = tmp_path / "demo"
    (demo / "data" / "test" / "LostAndFound" / "labels").mkdir(parents=True)
    (demo / "data" / "test" / "LostAndFound" / "labels" / "0001.png").write_bytes(b"")
    (demo / "eval_after" / "worst").mkdir(parents=True)
    (demo / "eval_after" / "worst" / "0001_overlay.png").write_bytes(b"")
    (demo / "pretrain" / "checkpoints").mkdir(parents=True)
    (demo / "default_model.pt").write_bytes(b"")
    check_output_folder(demo, default_model.output_layout())


def test_atomic_write_gives_new_files_the_umask_mode_and_keeps_a_replaced_files_mode(tmp_path):
    """Outputs are readable as ``open()`` would make them (not mkstemp's 0600); a replaced file keeps
    the permissions its owner gave it."""
    old = os.umask(0o027)
    try:
        fresh = atomic_write_bytes(tmp_path / "fresh.bin", b"x")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o640
        kept = tmp_path / "kept.bin"
        kept.write_bytes(b"old")
        kept.chmod(0o604)
        atomic_write_bytes(kept, b"new")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o604 and kept.read_bytes() == b"new"
    finally:
        os.umask(old)

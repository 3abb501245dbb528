"""The README's layout section names every module of the two packages (by its file stem), so that it
matches the tree a newcomer reads."""
from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _layout_block() -> str:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def test_every_package_module_is_in_the_readme_layout():
    block = _layout_block()
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", block))
    missing = []
    for top in ("pebal_perception", "pebal_training"):
        for path in sorted((REPO_ROOT / top).rglob("*.py")):
            if "__pycache__" in path.parts or path.name in ("__init__.py", "__main__.py"):
                continue
            if path.stem not in words:
                missing.append(str(path.relative_to(REPO_ROOT)))
    assert not missing, "modules missing from the README's layout section: " + ", ".join(missing)

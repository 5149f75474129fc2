"""Docs stay complete and true: every hook documented and tested, examples run, pages current."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from mixcore.registry import hook_names

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "plugin-guide.md"


def test_every_hook_has_a_section_in_the_plugin_guide():
    headings = set(re.findall(r"^### (\w+)$", GUIDE.read_text(), flags=re.M))
    assert hook_names() <= headings, sorted(hook_names() - headings)


def test_every_hook_is_called_by_a_test():
    text = (ROOT / "tests" / "core" / "test_hooks.py").read_text()
    called = set(re.findall(r"hook\.(\w+)\(", text)) | set(
        re.findall(r"def (register_\w+)\(", text)
    )
    assert hook_names() <= called, sorted(hook_names() - called)


def test_plugin_guide_code_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert len(blocks) >= len(hook_names())
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), namespace)


def test_generated_pages_are_current():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, render in module.GENERATED.items():
        assert (ROOT / "docs" / name).read_text() == render(), (
            f"run python docs/generate.py ({name})"
        )

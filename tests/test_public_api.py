from __future__ import annotations

import subprocess
import sys

import context_manager


def test_all_names_resolve() -> None:
    for name in context_manager.__all__:
        assert getattr(context_manager, name) is not None


def test_errors_importable_from_the_top_level() -> None:
    from context_manager import ContextManagerError, InvalidRoleError

    assert issubclass(InvalidRoleError, ContextManagerError)


def test_import_is_light() -> None:
    code = (
        "import sys, context_manager; "
        "heavy = [m for m in ('pydantic', 'numpy', 'torch', 'sentence_transformers', 'psutil', 'rich', "
        "'typer', 'bpe_openai', 'sqlite3') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

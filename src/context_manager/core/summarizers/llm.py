"""What the LLM summarizers share: the prompt, retries with backoff, a deadline, token usage.

:class:`LLMSummarizer` does everything but the HTTP request, which a provider subclass implements
(:class:`~context_manager.core.summarizers.openai_chat.OpenAISummarizer`,
:class:`~context_manager.core.summarizers.anthropic_messages.AnthropicSummarizer`). One call:

1. builds the prompt from the evicted messages within ``max_input_tokens``
   (:func:`~context_manager.core.summarizers.prompt.build_summary_prompt`);
2. sends it with the summary's token budget as the output limit, each attempt bounded by ``timeout``;
3. on a status worth retrying (408, 409, 429, 5xx), a timeout or a lost connection, waits and tries
   again, at most ``max_retries`` times: the server's ``retry-after`` (or ``retry-after-ms``) when it sends
   one, else exponential backoff with jitter. A wait longer than ``max_retry_wait``, past the
   ``total_timeout`` deadline or past the window's ``summarizer_timeout`` (when a window makes the call)
   gives up at once rather than sleep into the window's timeout;
4. returns the text and the token usage the provider reported, or raises
   :class:`~context_manager.core.errors.SummarizerRequestError` (status, attempts) - other statuses, a
   malformed body, an empty answer and an answer the provider stopped for safety (a content filter, a
   refusal: its text is cut short) are not retried.

The window falls back to the extractive summary on any exception, and records why.
"""

from __future__ import annotations

import abc
import asyncio
import email.utils
import functools
import json
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from context_manager.core.compression.summarizer import (
    SUMMARY_METADATA_KEY,
    summary_call_deadline,
    summary_header,
)
from context_manager.core.errors import (
    ConfigurationError,
    InvalidArgumentError,
    LifecycleError,
    SummarizerError,
    SummarizerRequestError,
)
from context_manager.core.messages import Message
from context_manager.core.summarizers.prompt import DEFAULT_INSTRUCTIONS, SummaryPrompt, build_summary_prompt
from context_manager.core.tokens import OFF_LOOP_CHARS, TokenCounter, cut_to_tokens, get_token_counter

__all__ = [
    "EmptyAnswer",
    "LLMSummarizer",
    "NotJSONAnswer",
    "OversizedAnswer",
    "RequestFailure",
    "SummaryResponse",
    "SummaryUsage",
    "check_client",
    "check_extra_parameters",
    "answer_byte_limit",
    "check_json_answer",
    "classify_sdk_error",
    "parse_retry_after",
    "read_answer",
    "resolve_base_url",
    "server_error_note",
    "url_without_credentials",
    "usage_count",
]

logger = logging.getLogger(__name__)

_MAX_TOKENS = 2**63 - 1  # what the monitors and metric exporters carry

RETRYABLE_STATUSES = frozenset({408, 409, 429})
"""Statuses retried besides every 5xx (Anthropic's 529 "overloaded" included)."""


@dataclass(frozen=True, slots=True)
class SummaryUsage:
    """Tokens one summary cost, as the provider reported them."""

    input_tokens: int | None
    """Prompt tokens billed (OpenAI ``prompt_tokens``, Anthropic ``input_tokens``); ``None`` when the
    response did not report them (no ``usage``, as some compatible servers answer, or no count in it)."""
    output_tokens: int | None
    """Completion tokens billed (OpenAI ``completion_tokens``, Anthropic ``output_tokens``); ``None`` when
    the response did not report them."""
    model: str
    """The model that answered (as the response named it, else as requested)."""
    provider: str
    """``"openai"`` or ``"anthropic"``."""
    cut_at_limit: bool = False
    """Whether the answer stopped at the output limit (OpenAI ``finish_reason "length"``, Anthropic
    ``stop_reason "max_tokens"``): the model wrote more than the summary's budget."""

    @property
    def total_tokens(self) -> int:
        """``input_tokens + output_tokens``, of those reported."""
        return (self.input_tokens or 0) + (self.output_tokens or 0)

    @property
    def reported(self) -> bool:
        """Whether the response reported any token count."""
        return self.input_tokens is not None or self.output_tokens is not None


@dataclass(frozen=True, slots=True)
class SummaryResponse:
    """The outcome of :meth:`LLMSummarizer.complete`."""

    text: str
    """The summary (stripped, never empty): the window's header line (``Summary of the earlier conversation
    (N messages compressed):``, as the extractive summary has), then the model's text."""
    usage: SummaryUsage
    """Tokens it cost."""
    attempts: int
    """Requests sent (1 without retries)."""
    prompt: SummaryPrompt
    """What was sent."""
    cut_at_limit: bool = False
    """Whether the model's answer stopped at the output limit (``SummaryUsage.cut_at_limit``): the text
    then ends at the answer's last whole sentence (when that keeps at least half of it)."""


@dataclass(frozen=True, slots=True)
class RequestFailure:
    """How a provider subclass classifies a failed request (see :meth:`LLMSummarizer._classify`)."""

    description: str
    """What went wrong, for the error message (no payload: it ends up in logs and history)."""
    retryable: bool
    """Whether another attempt may succeed."""
    status_code: int | None = None
    """The HTTP status, if there was a response."""
    retry_after: float | None = None
    """Seconds the server asked to wait (``retry-after`` / ``retry-after-ms``), if it did."""


_MAX_CHARS_PER_TOKEN = 64
"""Characters an answer may have per token of its output limit before it is measured in tokens (English
prose takes about 4 a token, but one token of ``o200k_base`` holds 128 spaces or 64 ``=``)."""

_ANSWER_TOKENS_PER_LIMIT_TOKEN = 2
"""A longer answer is cut to this many tokens (counted with the summarizer's counter) per token of its output
limit: room for a model whose tokenizer is denser than the counter; the window keeps the limit's worth of
tokens of it, never more."""

_MIN_FRAMED_TOKENS = 16
"""Below this many tokens of summary besides its header line, the summary goes without the header."""

_TIMED_OUT = RequestFailure("the request timed out", retryable=True)

_SENTENCE_END = re.compile(r"(?:[.!?。！？]+[\"'”’)\]»]*(?=\s|$)|[。！？])|\n")
"""Where a sentence ends: terminal punctuation (and closing quotes or brackets) before a space or the end,
CJK full stops anywhere, or a line break (a list item, a paragraph)."""


def last_whole_sentences(text: str) -> str:
    """``text`` up to the end of its last whole sentence, if that keeps at least half of it; else ``text``.

    For an answer cut at the output limit: ``"Ada lives in Lisbon. She asked how to"`` is
    ``"Ada lives in Lisbon."``. Without a sentence end in its second half the text is kept as it is (one
    long sentence cut is still most of the summary).
    """
    ends = [match.end() for match in _SENTENCE_END.finditer(text) if _ends_sentence(text, match)]
    if not ends or ends[-1] >= len(text.rstrip()):  # no sentence end, or it ends on one: nothing to cut
        return text
    if ends[-1] < len(text) / 2:
        return text
    return text[: ends[-1]].rstrip()


_ABBREVIATIONS = frozenset(
    ("mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "vs", "etc", "e.g", "i.e", "cf", "fig")
    + ("approx", "inc", "ltd", "dept", "al")
)
"""Words whose full stop ends no sentence (``Mr. Jones``, ``e.g. trams``), without their final dot."""


_WORD_LOOKBACK = 40
"""Characters read back for the word before a full stop: a longer word is no abbreviation, initial or list
number (each check is bounded, so an answer of many sentences is read in linear time)."""

_NEXT_VISIBLE = re.compile(r"\s*(\S?)")


def _ends_sentence(text: str, match: re.Match[str]) -> bool:
    """Whether a full stop :data:`_SENTENCE_END` found ends a sentence (other marks always do).

    Not after an abbreviation (``Mr.``, ``e.g.``, ``etc.``), an initial (``U.S.``, ``J. Smith``) or a list
    number at the start of a line (``3.``), nor before a lower-case word (``etc. and``). Reads only the
    word before the mark and the character after it: slicing the text up to each mark (and from it) made
    an answer of a few hundred kilobytes take seconds on the event loop (quadratic).
    """
    if not match.group().startswith(".") or match.group().startswith(".."):
        return True
    word_end = match.start()
    while word_end > 0 and text[word_end - 1].isspace():  # the last word, spaces before the mark skipped
        word_end -= 1
    floor = max(word_end - _WORD_LOOKBACK, 0)
    word_start = word_end
    while word_start > floor and not text[word_start - 1].isspace():
        word_start -= 1
    long_word = word_start == floor and floor > 0 and not text[floor - 1].isspace()
    word = "" if long_word else text[word_start:word_end]
    before_end = match.start() - len(word)  # where the text before the word ends
    if word.lower().rstrip(".") in _ABBREVIATIONS or (len(word.replace(".", "")) <= 1 and word.isalpha()):
        return False
    if word.replace(".", "").isalpha() and "." in word and len(word.replace(".", "")) <= 3:
        return False  # U.S., e.g, i.e
    if word.isdigit() and (before_end == 0 or text[before_end - 1] == "\n"):
        return False  # a list number
    following = _NEXT_VISIBLE.match(text, match.end())
    first = following.group(1) if following is not None else ""
    return not (first.isalpha() and first.islower())


class EmptyAnswer(Exception):
    """Raised by a provider subclass when the model answered without a usable text (not retried)."""

    def __init__(self, description: str, usage: SummaryUsage) -> None:
        super().__init__(description)
        self.usage = usage
        """What the answer cost (billed although unusable)."""


class NotJSONAnswer(Exception):
    """Raised by a provider subclass when the server answered with a body that is not JSON (not retried)."""


def check_json_answer(response: Any) -> None:
    """Refuse an answer the SDK handed back as text: the server sent no JSON.

    The SDKs return a body whose ``Content-Type`` is not JSON as a ``str`` rather than fail: a stream of
    server-sent events from a server or gateway that streams every answer, a proxy's login or error
    page. Read as a response, it failed as a "malformed response (AttributeError)".

    Raises:
        NotJSONAnswer: ``response`` is a ``str``; its message says which kind, without quoting it.
    """
    if not isinstance(response, str):
        return
    start = response.lstrip()[:16]
    if start.startswith(("data:", "event:", "id:", ":")):
        raise NotJSONAnswer(
            "the server streamed its answer (server-sent events) although no stream was asked for: turn "
            "streaming off on the server or gateway"
        )
    kind = "an HTML page" if start.startswith("<") else f"{len(response)} characters of text"
    raise NotJSONAnswer(
        f"the response is not JSON ({kind}): check that base_url is the API's, not a proxy's or a web page's"
    )


class OversizedAnswer(Exception):
    """Raised when a response body passes :func:`answer_byte_limit` (not retried).

    A server ignoring the output limit answers as much again.
    """


_ANSWER_BASE_BYTES = 1 << 20
"""Bytes any answer may have besides :data:`_ANSWER_BYTES_PER_TOKEN` per token of its output limit."""

_ANSWER_BYTES_PER_TOKEN = 1024
"""Bytes of response body an answer may have per token of its output limit: a token of text takes a few
bytes (6 a character written as a JSON escape); the rest leaves room for what ``extra_parameters`` may add
per token (``logprobs``: about 75 bytes per alternative of ``top_logprobs`` in compact JSON, so up to about
12 alternatives fit; 20 take 1.6 KB a token, and an answer that long past the 1 MiB base is refused)."""

_PARSE_ON_LOOP_BYTES = 64 * 1024
"""Bodies up to this size are parsed on the event loop (well under a millisecond); larger ones in a thread.

``json.loads`` holds the interpreter lock while it runs (about 10 ms a megabyte), so the thread spares the
loop the building of the model, not the parse itself: :func:`answer_byte_limit` is what bounds that."""


def answer_byte_limit(max_output_tokens: int) -> int:
    """Bytes of response body :func:`read_answer` reads for an answer limited to ``max_output_tokens``.

    1 MiB plus 1 KiB a token (1.1 MB for a 100-token summary): far more than any answer within the limit
    takes, far less than a server ignoring it may send (22 MB of text was parsed on the event loop, holding
    it about 0.3 s, to keep the first few kilobytes).
    """
    return _ANSWER_BASE_BYTES + max_output_tokens * _ANSWER_BYTES_PER_TOKEN


async def read_answer(response: Any, model_type: Any, max_bytes: int) -> Any:
    """Read a streamed SDK response (``with_streaming_response``) into ``model_type``, at most ``max_bytes``.

    The SDKs read the whole body and parse it on the event loop; here the body is read a chunk at a time
    and given up once it passes ``max_bytes``, and a large one is parsed in a worker thread. The model is
    built as the SDKs build it (``construct``: nested objects as their types, unknown fields kept, no
    validation). A body whose ``Content-Type`` is not JSON is parsed all the same when it is JSON, as the
    SDKs do.

    Raises:
        OversizedAnswer: the body passed ``max_bytes`` (reading stops there; the connection is dropped).
        NotJSONAnswer: the body is no JSON and its ``Content-Type`` says so (:func:`check_json_answer`).
        ValueError: the body is not valid JSON although it says it is (``JSONDecodeError``).
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise OversizedAnswer(
                f"the response passed {max_bytes:,} bytes, more than any answer within the output limit "
                "takes: the server ignores the output limit (max_tokens); reading stopped there"
            )
        chunks.append(chunk)
    body = b"".join(chunks)
    content_type = str(response.headers.get("content-type", "*")).split(";")[0].strip()
    parse = functools.partial(_parse_answer, body, model_type, content_type.endswith("json"))
    if size > _PARSE_ON_LOOP_BYTES:
        return await asyncio.to_thread(parse)
    return parse()


def _parse_answer(body: bytes, model_type: Any, declared_json: bool) -> Any:
    """The model ``body`` holds (see :func:`read_answer`)."""
    try:
        data = json.loads(body)
    except ValueError:
        if declared_json:
            raise
        check_json_answer(body.decode("utf-8", errors="replace"))
        raise
    if not isinstance(data, dict):
        raise TypeError(f"the response is a JSON {type(data).__name__}, not an object")
    return model_type.construct(**data)


class LLMSummarizer(abc.ABC):
    """A summarizer backed by a chat model; subclasses send the request (see the module docstring).

    Args:
        model: The model name sent with each request.
        timeout: Seconds one request may take.
        max_retries: Further attempts after a failure worth retrying (0: none).
        total_timeout: Seconds one summary may take, retries and waits included (``None``: no bound
            besides the window's ``summarizer_timeout``, which cancels the call).
        max_input_tokens: Bound of the prompt (instructions plus transcript), counted with ``counter``.
        instructions: The system prompt (``{words}`` is replaced by the word budget).
        counter: Token counter for the prompt budget (default: the exact ``o200k_base`` counter).
        backoff: First backoff wait in seconds (doubled per attempt, full jitter).
        max_backoff: Upper bound of a backoff wait.
        max_retry_wait: A ``retry-after`` longer than this gives up instead of waiting.

    Raises:
        InvalidArgumentError: an argument is out of range.
    """

    provider: ClassVar[str] = ""
    """``"openai"`` or ``"anthropic"``; names the adapter in errors and usage records."""

    def __init__(
        self,
        model: str,
        *,
        timeout: float = 30.0,
        max_retries: int = 2,
        total_timeout: float | None = None,
        max_input_tokens: int = 8000,
        instructions: str = DEFAULT_INSTRUCTIONS,
        counter: TokenCounter | None = None,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_wait: float = 30.0,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise InvalidArgumentError("model", model, "a non-empty model name")
        for name, value in (("timeout", timeout), ("backoff", backoff), ("max_backoff", max_backoff)):
            _check_seconds(name, value)
        _check_seconds("max_retry_wait", max_retry_wait, allow_zero=True)
        if total_timeout is not None:
            _check_seconds("total_timeout", total_timeout)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidArgumentError("max_retries", max_retries, "an integer >= 0")
        if (
            isinstance(max_input_tokens, bool)
            or not isinstance(max_input_tokens, int)
            or max_input_tokens < 64
        ):
            raise InvalidArgumentError("max_input_tokens", max_input_tokens, "an integer >= 64")
        if not isinstance(instructions, str) or not instructions.strip():
            raise InvalidArgumentError("instructions", instructions, "a non-empty string")
        if counter is None:
            counter = get_token_counter()
        needed = counter.count(instructions) + 64
        if max_input_tokens < needed:
            raise InvalidArgumentError(
                "max_input_tokens", max_input_tokens, f"an integer >= {needed} (the instructions plus 64)"
            )
        self.model = model
        """The model name sent with each request."""
        self.timeout = float(timeout)
        """Seconds one request may take."""
        self.max_retries = max_retries
        """Further attempts after a failure worth retrying."""
        self.total_timeout = None if total_timeout is None else float(total_timeout)
        """Seconds one summary may take, retries included (``None``: unbounded here)."""
        self.max_input_tokens = max_input_tokens
        """Bound of the prompt in tokens."""
        self.instructions = instructions
        """The system prompt template."""
        self.counter: TokenCounter = counter
        """Counts the prompt's tokens."""
        self.backoff = float(backoff)
        """First backoff wait in seconds."""
        self.max_backoff = float(max_backoff)
        """Upper bound of a backoff wait."""
        self.max_retry_wait = float(max_retry_wait)
        """A longer ``retry-after`` gives up instead of waiting."""
        self.requests = 0
        """Requests sent so far (retries included)."""
        self.input_tokens = 0
        """Prompt tokens billed so far, failed summaries included."""
        self.output_tokens = 0
        """Completion tokens billed so far, failed summaries included."""
        self._clock: Callable[[], float] = time.monotonic
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._random = random.Random()
        self._client_to_close: Any = None  # set by a subclass that creates its own SDK client
        self._telemetry_attributes: dict[str, str | int] | None = None

    @property
    def name(self) -> str:
        """``provider:model``, as in the ``summarizer`` configuration option."""
        return f"{self.provider}:{self.model}"

    @property
    def endpoint(self) -> str | None:
        """The URL requests go to (``None`` when a subclass does not say)."""
        return None

    @property
    def telemetry_attributes(self) -> dict[str, str | int]:
        """The OpenTelemetry GenAI attributes of this summarizer's calls.

        ``gen_ai.provider.name``: the GenAI semantic conventions' well-known value for the provider the
        endpoint's host belongs to (``openai`` for OpenAI's API only, ``azure.ai.openai`` for Azure
        OpenAI, ``anthropic``, ``groq``, ``mistral_ai`` ...), ``_OTHER`` for any other host (a vLLM,
        Ollama or LM Studio server, a gateway: speaking a provider's protocol does not make it that
        provider); ``server.address`` and ``server.port``: the endpoint's host and port. Without an
        :attr:`endpoint` (a subclass of your own may define it), only ``gen_ai.provider.name``:
        :attr:`provider`, or ``_OTHER`` if that is empty.
        """
        cached = self._telemetry_attributes
        if cached is None:
            cached = self._telemetry_attributes = _telemetry_attributes(self.endpoint, self.provider)
        return cached

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r})"

    async def __call__(self, messages: Sequence[Message], budget_tokens: int) -> str:
        """Summarize ``messages`` within ``budget_tokens`` (the :class:`Summarizer` protocol)."""
        return (await self.complete(messages, budget_tokens)).text

    async def complete(self, messages: Sequence[Message], budget_tokens: int) -> SummaryResponse:
        """Summarize ``messages`` and report what it cost.

        Raises:
            InvalidArgumentError: ``budget_tokens`` is not a positive integer.
            LifecycleError: the HTTP client is closed (:meth:`cleanup` closes the one the summarizer
                created): no request is sent.
            SummarizerRequestError: every attempt failed, or a failure not worth retrying.
            SummarizerError: the model answered with no text.
        """
        if isinstance(budget_tokens, bool) or not isinstance(budget_tokens, int) or budget_tokens <= 0:
            raise InvalidArgumentError("budget_tokens", budget_tokens, "an integer > 0")
        self._check_open()
        # the summary becomes the window's system message: introduced as one, as the extractive summary is
        # (unlabelled, "the user is an administrator" read as an instruction to the assistant)
        header = summary_header(_covered(messages))
        model_budget = budget_tokens - self.counter.count(header) - 1
        if model_budget < _MIN_FRAMED_TOKENS:
            header, model_budget = "", budget_tokens
        build = functools.partial(
            build_summary_prompt,
            messages,
            model_budget,
            counter=self.counter,
            max_input_tokens=self.max_input_tokens,
            instructions=self.instructions,
        )
        if sum(len(message.content) for message in messages) > OFF_LOOP_CHARS:
            prompt = await asyncio.to_thread(build)  # counting megabytes would hold the event loop
        else:
            prompt = build()
        deadline = None if self.total_timeout is None else self._clock() + self.total_timeout
        attempt = 0
        while True:
            attempt += 1
            self._check_open()  # a cleanup() while the previous attempt waited
            request_timeout = self.timeout
            if deadline is not None:
                request_timeout = min(request_timeout, deadline - self._clock())
                if request_timeout <= 0:
                    raise SummarizerRequestError(
                        f"{self.name}: no time left for attempt {attempt} "
                        f"(total_timeout {self.total_timeout:g} s)",
                        provider=self.provider,
                        attempts=attempt - 1,
                    )
            self.requests += 1
            # the SDKs' timeout bounds each read: an answer trickling in (keep-alive whitespace) outlived it
            limit = asyncio.timeout(request_timeout)
            try:
                async with limit:
                    text, usage = await self._request(prompt, request_timeout)
            except EmptyAnswer as empty:
                self.input_tokens += empty.usage.input_tokens or 0
                self.output_tokens += empty.usage.output_tokens or 0
                unanswered = SummarizerError(f"{self.name}: {empty}")
                unanswered.usage = empty.usage  # billed all the same: the monitors count it
                raise unanswered from None
            except Exception as error:
                # a cleanup() while the request was in flight: its cut-off answer is no lost connection to
                # wait for and retry, nor to report as one
                self._check_open()
                failure = _TIMED_OUT if limit.expired() else self._classify(error)
                wait = self._wait_before_retry(failure, attempt, deadline)
                if not isinstance(wait, float):
                    notes = [f"after {attempt} attempts"] if attempt > 1 else []
                    if wait:
                        notes.append(f"not retried: {wait}")
                    raise SummarizerRequestError(
                        f"{self.name}: {failure.description}" + (f" ({'; '.join(notes)})" if notes else ""),
                        provider=self.provider,
                        status_code=failure.status_code,
                        attempts=attempt,
                    ) from error
                logger.info(
                    "%s: %s; retrying in %.2f s (attempt %d of %d)",
                    self.name,
                    failure.description,
                    wait,
                    attempt + 1,
                    self.max_retries + 1,
                )
                await self._sleep(wait)
                continue
            self.input_tokens += usage.input_tokens or 0
            self.output_tokens += usage.output_tokens or 0
            text = text.strip()
            if not text:
                raise SummarizerError(f"{self.name}: the model returned no text")
            if len(text) > prompt.max_output_tokens * _MAX_CHARS_PER_TOKEN:
                text = await self._cut_long_answer(text, prompt.max_output_tokens)
            if usage.cut_at_limit:
                # a summary stopped mid-sentence at the output limit ("... she asked how to"): read as a
                # finished one, its last words said something else. It ends at its last whole sentence.
                whole = last_whole_sentences(text)
                logger.info(
                    "%s: the summary reached its output limit (%d tokens); %s",
                    self.name,
                    prompt.max_output_tokens,
                    "kept up to its last whole sentence"
                    if whole != text
                    else "no sentence end to cut back to",
                )
                text = whole
            if header:
                text = f"{header}\n{text}"
            return SummaryResponse(
                text=text, usage=usage, attempts=attempt, prompt=prompt, cut_at_limit=usage.cut_at_limit
            )

    async def _cut_long_answer(self, text: str, max_output_tokens: int) -> str:
        """``text`` within :data:`_ANSWER_TOKENS_PER_LIMIT_TOKEN` tokens per token of ``max_output_tokens``.

        Measured in tokens, not characters: a summary holding long runs of spaces or ``=`` (an indented
        code block, a table's rule) is well within its limit at more than 64 characters a token, and cutting
        at that many characters lost its end. The cut costs time in proportion to the limit, not to the
        answer (a server that ignores the limit sends megabytes the window would count and cut past its
        ``summarizer_timeout``). Always in a worker thread, whatever its length: an answer this dense (runs
        of ``=`` encode about 20 times slower than prose) held the event loop 80 ms under ``OFF_LOOP_CHARS``.
        """
        kept_tokens = max_output_tokens * _ANSWER_TOKENS_PER_LIMIT_TOKEN
        kept = await asyncio.to_thread(cut_to_tokens, self.counter, text, kept_tokens)
        if len(kept) < len(text):
            logger.info(
                "%s: the answer passes %d tokens for a %d-token summary; its first %d characters are kept",
                self.name,
                kept_tokens,
                max_output_tokens,
                len(kept),
            )
        return kept

    def _wait_before_retry(
        self, failure: RequestFailure, attempt: int, deadline: float | None
    ) -> float | str:
        """Seconds to wait before the next attempt, or why there is none.

        ``""`` when the failure is not worth retrying or no retry is left.
        """
        if not failure.retryable or attempt > self.max_retries:
            return ""
        if failure.retry_after is not None:
            wait = float(failure.retry_after)
            if wait > self.max_retry_wait:
                allowed = self.max_retry_wait
                return f"the server asked to wait {wait:g} s, more than max_retry_wait ({allowed:g} s)"
        else:
            wait = self._random.uniform(0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
        if deadline is not None and self._clock() + wait >= deadline:
            return f"the next would end past total_timeout ({self.total_timeout:g} s)"
        left = _window_time_left()
        if left is not None and wait >= left:
            # the window cancels the call at its summarizer_timeout: sleeping into it only delayed the add,
            # and the history said "timeout after 10 s" instead of the server's answer
            return f"the wait ({wait:g} s) would end past the window's summarizer_timeout ({left:.1f} s left)"
        return wait

    @abc.abstractmethod
    async def _request(self, prompt: SummaryPrompt, request_timeout: float) -> tuple[str, SummaryUsage]:
        """Send one request; return the text and the usage.

        Raise :class:`EmptyAnswer` when the model answered without text, anything else on failure.
        """

    @abc.abstractmethod
    def _classify(self, error: Exception) -> RequestFailure:
        """Say what a failed request's exception means and whether to retry it."""

    def _client_closed(self) -> bool:
        """Whether the HTTP client requests go through is closed (a subclass with a client says so)."""
        return False

    def _check_open(self) -> None:
        """Refuse to send through a closed client.

        The SDKs sent such a request all the same, and the HTTP client's refusal came back as a lost
        connection (retried with backoff, reported as ``connection failed (RuntimeError)``) or a bare
        ``RuntimeError``: nothing said the summarizer had been cleaned up.
        """
        if self._client_closed():
            raise LifecycleError(
                f"{self.name}: used after its HTTP client was closed (cleanup() closes the client the "
                "summarizer created; a client passed in is closed by its owner): create a new summarizer"
            )

    async def cleanup(self) -> None:
        """Close the HTTP client if this summarizer created it (a client you passed in stays open).

        ``async with`` calls it, and so does ``EnhancedContextManager.cleanup()`` for the summarizer it
        built from ``config.summarizer``. Safe to call more than once. A summarizer whose client it closed
        refuses later calls with :class:`~context_manager.core.errors.LifecycleError` (the window then uses
        the extractive summary and records why).
        """
        client, self._client_to_close = self._client_to_close, None
        if client is not None:
            await client.close()

    async def aclose(self) -> None:
        """Alias of :meth:`cleanup` (the name httpx and the provider SDKs use)."""
        await self.cleanup()

    async def __aenter__(self) -> LLMSummarizer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cleanup()


_STATUS_HINTS = {
    400: "check extra_parameters, and that max_input_tokens fits the model's context window",
    401: "check the API key",
    403: "check the API key and its access to the model",
    404: "check the model name and the base_url",
}
"""What to check after a status (the response body is left out: some servers quote the request in it)."""


def classify_sdk_error(error: Exception, sdk: Any) -> RequestFailure:
    """Classify an exception of the ``openai`` or ``anthropic`` SDK (their error classes share a shape)."""
    if isinstance(error, sdk.APIStatusError):
        status = int(error.status_code)
        retryable = status in RETRYABLE_STATUSES or status >= 500
        headers = getattr(error.response, "headers", None) or {}
        retry_after = parse_retry_after(headers) if retryable else None
        hint = _STATUS_HINTS.get(status)
        code = _error_code(error) if status == 400 else None
        if code is not None and "context" in code.lower():
            hint = "the prompt does not fit the model's context window: lower max_input_tokens"
        return RequestFailure(
            f"HTTP {status} ({type(error).__name__}{f': {code}' if code else ''})"
            + (f"; {hint}" if hint else ""),
            retryable,
            status_code=status,
            retry_after=retry_after,
        )
    if isinstance(error, NotJSONAnswer | OversizedAnswer):
        return RequestFailure(str(error), retryable=False)
    if isinstance(error, sdk.APITimeoutError):
        return _TIMED_OUT
    if isinstance(error, sdk.APIConnectionError):
        return RequestFailure(
            f"connection failed ({type(error.__cause__ or error).__name__}){_proxy_note(error)}",
            retryable=True,
        )
    if isinstance(error, sdk.APIResponseValidationError | ValueError | TypeError | AttributeError | KeyError):
        # a body that is not JSON or not the expected shape (JSONDecodeError is a ValueError)
        return RequestFailure(f"malformed response ({type(error).__name__})", retryable=False)
    return RequestFailure(f"{type(error).__name__}", retryable=False)


_ERROR_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{2,63}")
_GENERIC_CODES = frozenset({"error", "invalid_request_error", "BadRequestError", "bad_request"})


def _error_code(error: Exception) -> str | None:
    """The specific machine-readable code of an error answer (``context_length_exceeded``), if it has one.

    Read from the body's ``code``, else its ``type`` (llama.cpp's ``exceed_context_size_error``), in the
    body or its ``error`` object: an identifier quotes nothing of the request, unlike the message, which is
    left out. Generic values (``invalid_request_error``) say no more than the status.
    """
    body = getattr(error, "body", None)
    places = [body.get("error"), body] if isinstance(body, Mapping) else []
    for place in places:
        if not isinstance(place, Mapping):
            continue
        for key in ("code", "type"):
            value = place.get(key)
            if isinstance(value, str) and _ERROR_CODE.fullmatch(value) and value not in _GENERIC_CODES:
                return value
    return None


def _proxy_note(error: Exception) -> str:
    """Say so when the failed request went to a proxy the environment names (the SDKs' clients use it).

    A local server's requests go to ``HTTP_PROXY`` too unless ``NO_PROXY`` lists its host, and the failure
    then reads as the server being down. The proxy's URL is left out (it may hold credentials).
    """
    import urllib.request

    url = getattr(getattr(error, "request", None), "url", None)
    scheme, host = getattr(url, "scheme", None), getattr(url, "host", None)
    if not isinstance(scheme, str) or not isinstance(host, str):
        return ""
    proxies = urllib.request.getproxies_environment()
    variable = f"{scheme.upper()}_PROXY" if proxies.get(scheme) else "ALL_PROXY" if proxies.get("all") else ""
    if not variable or urllib.request.proxy_bypass(host):  # NO_PROXY (the proxies are the environment's)
        return ""
    return (
        f"; sent through the proxy {variable} names (add {host} to NO_PROXY if the server is not behind it)"
    )


def usage_count(value: Any) -> int | None:
    """A token count of a response's ``usage`` as an int; ``None`` for anything that is no count.

    Servers speaking a provider's protocol do not all fill ``usage`` the same way: a missing or ``null``
    field (or no ``usage`` at all), a string, an object, a negative or absurd number, a bool are all read
    as not reported (the summary itself is good; its cost is unknown, and 0 would be a false figure), a
    fractional one is rounded down.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value <= _MAX_TOKENS:  # False for NaN too
        return None
    return int(value)


def server_error_note(response: Any) -> str:
    """``"; the server said: ..."`` for a response that carries an ``error`` object, else ``""``.

    Some gateways answer an upstream failure with status 200 and a body of ``{"error": {...}}``: the SDK
    parses it as a response without choices or content (its models keep unknown fields), and the
    failure would read "no choices" without the server's reason.
    """
    extra = getattr(response, "model_extra", None)
    error = extra.get("error") if isinstance(extra, dict) else None
    if error is None:
        error = getattr(response, "error", None)
    if isinstance(error, dict):
        message, code = error.get("message"), error.get("code", error.get("type"))
    else:
        message, code = getattr(error, "message", None), getattr(error, "code", getattr(error, "type", None))
    if not isinstance(message, str) or not message:
        return ""
    kind = f" ({code})" if isinstance(code, str | int) and not isinstance(code, bool) and code != "" else ""
    return f"; the server said: {message[:300]!r}{kind}"


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds a response asks the client to wait: ``retry-after-ms``, else ``retry-after`` (seconds or date).

    Returns ``None`` when neither header is there or readable; negative values count as 0.
    """
    getter = headers.get
    milliseconds = getter("retry-after-ms")
    if milliseconds is not None:
        try:
            value = float(milliseconds) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(value, 0.0)
    raw = getter("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        return max(when.timestamp() - time.time(), 0.0)
    return max(value, 0.0) if math.isfinite(value) else None


def check_client(client: Any, sdk: Any, expected: str) -> None:
    """Refuse a ``client=`` that is not an asynchronous client of ``sdk`` (``openai`` or ``anthropic``).

    A synchronous one (``OpenAI()`` for ``AsyncOpenAI()``) sent each request from the event loop, blocking
    it, and the answer then failed as a "malformed response (TypeError)".

    Raises:
        InvalidArgumentError: anything else than ``None`` or such a client.
    """
    if client is None:
        return
    base = getattr(getattr(sdk, "_base_client", None), "AsyncAPIClient", None)  # the SDKs' shared base
    usable = isinstance(client, base) if isinstance(base, type) else hasattr(client, "with_options")
    if not usable:
        raise InvalidArgumentError(
            "client",
            client,
            f"an {expected} (or another asynchronous client of the {sdk.__name__} SDK, such as its Azure, "
            "Bedrock or Vertex ones), or None",
        )


def check_extra_parameters(extra_parameters: Any, reserved: Sequence[str]) -> dict[str, Any]:
    """A copy of an adapter's ``extra_parameters``, refusing a field the adapter sets itself.

    Such a field was silently replaced (``model``), sent next to the adapter's own (``max_tokens`` beside
    ``max_completion_tokens``, which OpenAI refuses) or changed the answer's shape (``stream``: the
    request was sent, and billed, and its stream read as a malformed response).

    Raises:
        InvalidArgumentError: not a mapping, or a key in ``reserved`` (or ``stream``, ``timeout``).
    """
    if extra_parameters is None:
        return {}
    if not isinstance(extra_parameters, Mapping):
        raise InvalidArgumentError("extra_parameters", extra_parameters, "a mapping of request fields")
    reserved = (*reserved, "timeout", "stream")
    taken = [name for name in reserved if name in extra_parameters]
    if taken:
        raise InvalidArgumentError(
            "extra_parameters",
            extra_parameters,
            "request fields other than " + ", ".join(map(repr, reserved)),
            detail=", ".join(map(repr, taken)) + " set by the summarizer: the model and the summary budget "
            "are its arguments, the timeout is its timeout option, summaries are not streamed",
        )
    return dict(extra_parameters)


def resolve_base_url(base_url: Any, variable: str, default: str) -> str:
    """The endpoint to send to: ``base_url``, else the ``variable`` environment variable, else ``default``.

    An empty variable (an env file's ``OPENAI_BASE_URL=``) counts as unset: the SDKs took it for the URL
    and sent every request to ``''``.

    Raises:
        InvalidArgumentError: ``base_url`` is no http:// or https:// URL.
        ConfigurationError: the variable is set to something else than such a URL.
    """
    import os

    name = "base_url"
    if base_url is None:
        base_url = os.environ.get(variable, "").strip() or None
        if base_url is None:
            return default
        name = variable
    if not isinstance(base_url, str) or not base_url.strip().lower().startswith(("http://", "https://")):
        error = InvalidArgumentError if name == "base_url" else ConfigurationError
        shown = url_without_credentials(base_url) if isinstance(base_url, str) else base_url
        raise error(name, shown, "an http:// or https:// URL, e.g. http://127.0.0.1:8000/v1")
    return base_url.strip()


_USERINFO = re.compile(r"^(\s*[A-Za-z][A-Za-z0-9+.-]*://)?[^/?#]*@")


def url_without_credentials(url: str) -> str:
    """``url`` with the ``user:token@`` before its host (if any) as ``***@``: safe for messages and logs.

    The whole user part goes, up to the last ``@`` before the path: a token is often passed as the user name
    alone (``https://sk-...@gateway/v1``), and a password may hold an unencoded ``@``.
    """
    return _USERINFO.sub(lambda match: (match.group(1) or "") + "***@", url, count=1)


_GENAI_PROVIDER_HOSTS = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "api.cohere.com": "cohere",
    "api.cohere.ai": "cohere",
    "api.deepseek.com": "deepseek",
    "api.groq.com": "groq",
    "api.mistral.ai": "mistral_ai",
    "api.moonshot.ai": "moonshot_ai",
    "api.moonshot.cn": "moonshot_ai",
    "api.perplexity.ai": "perplexity",
    "api.x.ai": "x_ai",
    "generativelanguage.googleapis.com": "gcp.gemini",
}
"""Hosts serving a provider's models, by the GenAI conventions' well-known ``gen_ai.provider.name``."""

_GENAI_PROVIDER_DOMAINS = (
    (".openai.azure.com", "azure.ai.openai"),
    (".cognitiveservices.azure.com", "azure.ai.openai"),
    ("-aiplatform.googleapis.com", "gcp.vertex_ai"),  # REGION-aiplatform.googleapis.com
)

OTHER_PROVIDER = "_OTHER"
"""``gen_ai.provider.name`` of a host no well-known value applies to (a local or self-hosted server)."""


def _telemetry_attributes(endpoint: str | None, provider: str) -> dict[str, str | int]:
    """``gen_ai.provider.name``, ``server.address`` and ``server.port`` of requests to ``endpoint``."""
    if endpoint is None:
        return {"gen_ai.provider.name": provider or OTHER_PROVIDER}
    from urllib.parse import urlsplit

    url = urlsplit(endpoint)
    host = (url.hostname or "").lower()
    name = _GENAI_PROVIDER_HOSTS.get(host)
    if name is None:
        name = next((value for suffix, value in _GENAI_PROVIDER_DOMAINS if host.endswith(suffix)), None)
    if name is None and host == "aiplatform.googleapis.com":
        name = "gcp.vertex_ai"
    if name is None and host.startswith("bedrock-runtime.") and host.endswith(".amazonaws.com"):
        name = "aws.bedrock"  # the SDKs' Bedrock clients
    attributes: dict[str, str | int] = {"gen_ai.provider.name": name or OTHER_PROVIDER}
    if host:
        try:
            port = url.port
        except ValueError:
            port = None
        attributes["server.address"] = host
        attributes["server.port"] = port if port is not None else 443 if url.scheme == "https" else 80
    return attributes


def _window_time_left() -> float | None:
    """Seconds until the window's ``summarizer_timeout`` cancels the call being made; ``None`` outside one."""
    scope = summary_call_deadline.get()
    when = None if scope is None else scope.when()
    if when is None:
        return None
    return when - asyncio.get_running_loop().time()


def _covered(messages: Sequence[Message]) -> int:
    """Messages a summary of ``messages`` stands for: those a previous summary covered, and the others."""
    covered = 0
    for message in messages:
        earlier = message.metadata.get(SUMMARY_METADATA_KEY)
        if earlier is None:
            covered += 1
        elif isinstance(earlier, int) and not isinstance(earlier, bool):
            covered += earlier
    return covered


def _check_seconds(name: str, value: Any, *, allow_zero: bool = False) -> None:
    valid = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not valid or value < 0 or (value == 0 and not allow_zero):
        raise InvalidArgumentError(
            name, value, "a finite number of seconds " + (">= 0" if allow_zero else "> 0")
        )

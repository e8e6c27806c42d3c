"""Prefix-aware caching: exact token counts, the prompt-prefix analyser (lint), prefix keys and the
context cache for multi-turn chats.

Nothing heavy is imported here; tiktoken is loaded when an encoding is first needed.
"""

from __future__ import annotations

from stratacache.prefix.tokens import (
    ENCODINGS,
    EncodingUnavailableError,
    Tokenizer,
    encoding_for_model,
    load_encoding,
    split_pieces,
)

__all__ = [
    "ENCODINGS",
    "EncodingUnavailableError",
    "Tokenizer",
    "encoding_for_model",
    "load_encoding",
    "split_pieces",
]

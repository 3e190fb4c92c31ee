"""The describe stage's CLIP model, loaded once and kept by a long-running server.

Loading CLIP and embedding the vocabulary take seconds on a CPU; the job server keeps them in a
bounded :class:`changeclip.inference.cache.ModelCache` (its *describe* cache, see
:mod:`changeclip.server.app`), so that describe jobs after the first reuse them. A cached entry is a
:class:`LoadedDescriber`: the encoder and a small LRU of embedded vocabularies/queries.

The cache key holds everything that changes the model: the weights file (absolute path,
modification time in ns and size, as the ChangeCLIP model cache keys weights) or the OpenAI
download, the open_clip architecture, the device and the precision the encoder runs in. The key of
an embedded vocabulary is what is embedded: the class names, the prompt templates and the query's
sides. The one-shot CLI passes no cache and loads everything for its single run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Hashable
from pathlib import Path

from changeclip.describe.describer import parse_words
from changeclip.describe.encoder import DEFAULT_MODEL, ClipEncoder, OpenClipEncoder
from changeclip.describe.scoring import TextBank
from changeclip.describe.vocabulary import TEMPLATES
from changeclip.inference.cache import ModelCache

ENCODER_PRECISION = "fp32"
"""What :class:`OpenClipEncoder` runs in, whatever the job's ``precision`` (it is part of the key)."""

MAX_TEXT_BANKS = 8
"""Embedded vocabularies/queries kept per loaded encoder (each a few hundred KB)."""


def weights_key(weights: str | Path | None) -> tuple[Hashable, ...]:
    """The weights part of a cache key: ``(abspath, mtime_ns, size)``, or the download's name.

    Raises:
        OSError: the file cannot be stat'ed (the caller then loads uncached, so that the encoder
            raises its own error about the file).
    """
    if weights is None:
        return (f"open_clip:{DEFAULT_MODEL}/openai",)
    st = os.stat(weights)
    return os.path.abspath(weights), st.st_mtime_ns, st.st_size


def describe_key(weights: str | Path | None, model_name: str | None, device: str) -> tuple[Hashable, ...]:
    """The cache key of the describe encoder for these weights, architecture and device.

    Raises:
        OSError: ``weights`` cannot be stat'ed.
    """
    return ("describe", *weights_key(weights), model_name or "inferred", str(device), ENCODER_PRECISION)


class LoadedDescriber:
    """A loaded CLIP encoder and the vocabularies it has embedded (bounded LRU, thread-safe).

    Args:
        encoder: The CLIP encoder (never mutated by a job).
        max_banks: Embedded vocabularies/queries to keep.
    """

    def __init__(self, encoder: ClipEncoder, max_banks: int = MAX_TEXT_BANKS) -> None:
        self.encoder = encoder
        self.banks = ModelCache(max_entries=max_banks)

    def words(self, vocabulary_file: str | None, query_text: str) -> TextBank:
        """Vocabulary and query, parsed and checked as :func:`changeclip.describe.describer.load_words`
        does, embedded once per (class names, templates, query sides).

        Raises:
            InputError: as ``load_words``: a bad vocabulary file, an empty or too long query.
        """
        vocabulary, query = parse_words(self.encoder, vocabulary_file, query_text)
        key = (vocabulary.names, TEMPLATES, *((query.before, query.after) if query is not None else (None, None)))
        bank: TextBank = self.banks.get(key, lambda: TextBank.build(self.encoder, vocabulary, query))
        # the embeddings depend only on the key; the file's name and the query's wording are this job's
        return dataclasses.replace(bank, vocabulary=vocabulary, query=query)


def load_describer(weights: str | Path | None, model_name: str | None, device: str,
                   cache: ModelCache | None = None) -> LoadedDescriber:
    """The describe encoder for a job: from ``cache`` when given (loaded on a miss), else loaded now.

    Raises:
        ModelError: as :class:`OpenClipEncoder`.
    """

    def load() -> LoadedDescriber:
        return LoadedDescriber(OpenClipEncoder(weights, model_name, device=device))

    if cache is None:
        return load()
    try:
        key = describe_key(weights, model_name, device)
    except OSError:
        return load()  # a missing or unreadable file: the encoder says what is wrong with it
    loaded: LoadedDescriber = cache.get(key, load)
    return loaded

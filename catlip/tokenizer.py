"""CLIP's byte-level BPE tokenizer (open_clip's ``tokenize``), for the contrastive baseline.

Gives the ids of ``open_clip.tokenizer.tokenize`` (tested on every COCO caption and on edge cases):

1. clean: ``ftfy.fix_text``, HTML unescaped twice, whitespace squeezed, lower-cased;
2. split into words with open_clip's pattern: the special tokens, English contractions, letter
   runs, single digits, and runs of other non-space characters;
3. each word's UTF-8 bytes become printable stand-in characters (one per byte), the last one
   marked as end of word (``</w>``), and adjacent symbols are merged by the rank of the pair in
   the merge list, lowest first, until no known pair is left;
4. ``<start_of_text>`` + ids + ``<end_of_text>``, zero-padded to the context (77); a longer text
   keeps its first 76 ids and ends with ``<end_of_text>``.

The merge list, ``bpe_simple_vocab_16e6.txt.gz`` (48,894 merges: 49,408 ids with the 512 byte
symbols and 2 special tokens), ships inside the ``open-clip-torch`` wheel; it is read from the
installed package without importing it (open_clip's ``__init__`` pulls in torchvision and timm).
Words are memoised in an LRU cache, so a caption corpus costs about one dictionary hit per word.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from collections.abc import Sequence
from functools import cache, lru_cache
from itertools import pairwise
from pathlib import Path

import regex
import torch

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
CONTEXT_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2  # the merges CLIP was trained with (the file holds more)
SOT, EOT = "<start_of_text>", "<end_of_text>"
END_OF_WORD = "</w>"


def default_vocab_path() -> Path:
    """The merge list inside the installed ``open-clip-torch`` package (not imported)."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    where = "is not installed" if spec is None else f"has no {VOCAB_FILE}"
    raise FileNotFoundError(
        f"the CLIP BPE vocabulary ({VOCAB_FILE}) ships in the open-clip-torch wheel, which {where}: "
        "install the pinned version (pip install -r requirements.txt -c constraints.txt, or "
        "`pip install --no-deps open-clip-torch==3.3.0`), or pass vocab_path="
    )


def byte_symbols() -> list[str]:
    """The stand-in character for each byte 0..255: itself where printable, else chr(256 + n).

    Printable means ``!``..``~``, ``¡``..``¬`` and ``®``..``ÿ`` (188 bytes); the other 68 (controls,
    space, soft hyphen, ...) get 256, 257, ... in byte order, so no word holds whitespace.
    """
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    symbols, extra = [], 256
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(extra))
            extra += 1
    return symbols


@cache
def _fix_text():
    """ftfy.fix_text, imported on first use: importing this module (the CLIP baseline's model and
    data code do) must not need ftfy, which the lent GPU machine lacks (perf/gpu_suite.sh carries
    its wheel for the CLIP step benchmark)."""
    try:
        import ftfy
    except ImportError as err:
        raise ImportError(
            "catlip.tokenizer needs ftfy to clean captions as open_clip does: pip install ftfy==6.3.1"
        ) from err
    return ftfy.fix_text


def clean_text(text: str) -> str:
    """open_clip's "lower" cleaning: ftfy, HTML unescaped twice, whitespace squeezed, lower-case."""
    text = html.unescape(html.unescape(_fix_text()(text)))
    return " ".join(text.split()).lower()


class BPETokenizer:
    """Text -> CLIP token ids. ``tokenizer(texts)`` gives a (N, context_length) LongTensor."""

    def __init__(
        self,
        vocab_path: str | Path | None = None,
        *,
        context_length: int = CONTEXT_LENGTH,
        cache_size: int = 1 << 17,
    ) -> None:
        path = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]  # line 0: a version
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{path} is not CLIP's BPE merge list ({NUM_MERGES} pairs after a header)")

        # Id order: bytes in printable-first order (open_clip's), the same with </w>, merges, specials.
        symbols = byte_symbols()
        printable_first = sorted(range(256), key=lambda b: (ord(symbols[b]) >= 256, b))
        base = [symbols[b] for b in printable_first]
        tokens = base + [s + END_OF_WORD for s in base] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder: dict[str, int] = {t: i for i, t in enumerate(tokens)}
        self.decoder: list[str] = tokens
        self.ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        self.byte_to_symbol = symbols
        self.symbol_to_byte = {s: b for b, s in enumerate(symbols)}
        self.sot_token_id, self.eot_token_id = self.encoder[SOT], self.encoder[EOT]
        self.vocab_size = len(tokens)  # 49408
        self.context_length = context_length
        # Special tokens first (a caption that spells "<end_of_text>" gets the special id, as in
        # open_clip), then contractions, letter runs, one digit at a time, other symbol runs.
        self.word_re = regex.compile(
            rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
            regex.IGNORECASE,
        )
        self.word_ids = lru_cache(maxsize=cache_size)(self._word_ids)

    def _word_ids(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-split word (already mapped to byte symbols), by greedy lowest-rank merges."""
        if word in (SOT, EOT):
            return (self.encoder[word],)
        parts = [*word[:-1], word[-1] + END_OF_WORD]
        ranks = self.ranks
        while len(parts) > 1:
            rank, pair = min((ranks.get(p, NUM_MERGES), p) for p in pairwise(parts))
            if rank == NUM_MERGES:  # no adjacent pair is a known merge
                break
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence, left to right, without overlaps
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(self.encoder[p] for p in parts)

    def encode(self, text: str) -> list[int]:
        """Ids of a text, without the start/end tokens."""
        ids: list[int] = []
        to_symbol = self.byte_to_symbol
        for word in self.word_re.findall(clean_text(text)):
            ids.extend(self.word_ids("".join(to_symbol[b] for b in word.encode("utf-8"))))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids: special tokens spelt out, a space after each word, padding zeros as "!"."""
        data = bytes(self.symbol_to_byte[c] for i in ids for c in self.decoder[int(i)])
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        n = context_length or self.context_length
        if n < 2:
            raise ValueError(f"context_length must leave room for the start and end tokens, got {n}")
        out = torch.zeros(len(texts), n, dtype=torch.long)  # (N, context); 0 pads
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text)][: n - 1] + [self.eot_token_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


@cache
def default_tokenizer() -> BPETokenizer:
    """One shared tokenizer over the packaged vocabulary (built on first use, ~0.3 s)."""
    return BPETokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """CLIP token ids of ``texts``: a (N, context_length) LongTensor, as ``open_clip.tokenize``."""
    return default_tokenizer()(texts, context_length)

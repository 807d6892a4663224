"""The CLIP tokenizer, built offline, and fast exact token counting.

Stable Diffusion 1.x and 2.x both tokenize with CLIP's byte-level BPE (49,408 tokens, 77 per window). Its merges
ship in the open_clip_torch wheel as `bpe_simple_vocab_16e6.txt.gz`; we read that one file (never importing the
package, whose dependencies are heavy) and build the Hugging Face tokenizer from it. Given a base model, its
own tokenizer is used instead.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import unicodedata
from pathlib import Path
from typing import Any

import regex

from .errors import UserError
from .fileio import cache_root

CLIP_WINDOW = 77  # tokens per text-encoder window, start and end tokens included
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_MERGE_COUNT = 49152 - 256 - 2  # merges CLIP uses from the file
# CLIP's pre-tokenizer: whole words, single digits, runs of punctuation.
_PRETOKEN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


class TokenizerError(UserError):
    """The tokenizer or its vocabulary file cannot be found."""


def find_bpe_file() -> Path:
    """$CXRGEN_CLIP_BPE, else the file inside an installed open_clip_torch (found without importing it)."""
    env = os.environ.get("CXRGEN_CLIP_BPE")
    if env:
        if not Path(env).is_file():
            raise TokenizerError(f"CXRGEN_CLIP_BPE points at {env}, which does not exist")
        return Path(env)
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / BPE_FILE
            if candidate.is_file():
                return candidate
    raise TokenizerError(
        f"the CLIP vocabulary {BPE_FILE} was not found. Install the file without its dependencies: "
        "`pip install --no-deps open_clip_torch`, or set CXRGEN_CLIP_BPE to a copy of it, "
        "or pass a base model whose tokenizer/ folder should be used."
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest to code points from 256.

    The insertion order (printable bytes first) is the order of the first 256 vocabulary ids."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(others)})
    return table


def clip_vocabulary(bpe_file: Path) -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary and merge list from the BPE file: bytes, bytes at word end, merges, two specials."""
    with gzip.open(bpe_file, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = lines[1 : _MERGE_COUNT + 1]
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab_list)}, merges


@functools.cache
def clip_tokenizer(pad_token: str | None = None) -> Any:
    """The exact CLIP tokenizer (transformers' CLIPTokenizer) built from the BPE file, cached on disk; `pad_token`
    replaces its padding token (SDXL's and SD 3's second tokenizer pads with "!")."""
    from transformers import CLIPTokenizer

    folder = clip_tokenizer_files()
    extra = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer.from_pretrained(folder, model_max_length=CLIP_WINDOW, **extra)


def clip_tokenizer_files() -> Path:
    """A folder with vocab.json and merges.txt built from the BPE file (made once, keyed by its hash)."""
    bpe_file = find_bpe_file()
    digest = hashlib.sha256(bpe_file.read_bytes()).hexdigest()[:12]
    folder = cache_root() / f"clip-tokenizer-{digest}"
    if (folder / "merges.txt").is_file():
        return folder
    vocab, merges = clip_vocabulary(bpe_file)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    try:
        os.replace(tmp, folder)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_tokenizer(model: str | None = None) -> Any:
    """The tokenizer of a base model (hub id or local diffusers folder), else the offline CLIP tokenizer."""
    if model is None:
        return clip_tokenizer()
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    except OSError as exc:
        raise TokenizerError(
            f"cannot load the tokenizer of {model}: {exc}. Give a local diffusers model folder (with a "
            "tokenizer/ subfolder), or leave the model out to count with the CLIP tokenizer."
        ) from exc


class TokenCounter:
    """Counts CLIP tokens (start and end included) of prompts made of comma-separated parts.

    CLIP tokenizes each pre-token (word, digit, punctuation run) on its own, so a prompt's count is the sum over
    its pre-tokens; counts are cached per pre-token, which makes counting 160k prompts take seconds."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._cache: dict[str, int] = {}
        self._parts: dict[str, int] = {}

    def count(self, text: str) -> int:
        total = 2
        # as CLIP's normaliser: composed accents first ("neumonía" typed on a Mac is n-e-u-m-o-n-i-a + a combining
        # accent, which would split into extra pre-tokens), then whitespace, then case
        for word in _PRETOKEN.findall(" ".join(unicodedata.normalize("NFC", text).split()).lower()):
            n = self._cache.get(word)
            if n is None:
                n = len(self.tokenizer(word, add_special_tokens=False)["input_ids"])
                self._cache[word] = n
            total += n
        return total

    def count_parts(self, parts: list[str]) -> int:
        """Exact count of ", ".join(parts): pre-tokens never span the space after a comma, so the count is the
        sum of each part with its comma, plus the last part alone (both cached per part)."""
        if not parts:
            return 2
        return 2 + sum(map(self.part_cost, parts[:-1])) + self.count(parts[-1]) - 2

    def part_cost(self, part: str) -> int:
        """Tokens a comma-separated part adds to a prompt, its comma included (cached per part)."""
        n = self._parts.get(part)
        if n is None:
            n = self.count(part + ",") - 2
            self._parts[part] = n
        return n

    def exact(self, text: str) -> int:
        """The tokenizer's own count, without the cache (used by tests to check `count`)."""
        return len(self.tokenizer(text)["input_ids"])


def describe(tokenizer: Any) -> dict[str, Any]:
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "name": getattr(tokenizer, "name_or_path", ""),
    }


def token_stats(counts: list[int], limit: int = CLIP_WINDOW) -> dict[str, Any]:
    """Distribution of token counts: what share exceeds the window, and its quantiles."""
    if not counts:
        return {"prompts": 0}
    ordered = sorted(counts)

    def q(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * (len(ordered) - 1) + 0.5))]

    over = sum(c > limit for c in counts)
    return {
        "prompts": len(counts),
        "limit": limit,
        "over_limit": over,
        "over_limit_fraction": round(over / len(counts), 4),
        "mean": round(sum(counts) / len(counts), 2),
        "median": q(0.5),
        "p90": q(0.9),
        "p99": q(0.99),
        "max": ordered[-1],
    }

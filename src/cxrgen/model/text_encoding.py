"""CLIP prompt windows: the one home of how a prompt becomes CLIP token windows and their embeddings, which every
model family's `encode` (training, caching, sampling and generation) goes through.

Stable Diffusion's text encoder sees 77 tokens (start, 75 words' worth, end). With `long=True` a longer prompt is
cut into 75-token chunks at comma boundaries where possible, each encoded in its own window and the results
concatenated along the sequence; the UNet's cross-attention accepts any length. A batch's prompts are padded to
the same number of chunks with the encoding of an empty window. A prompt that fits one window is encoded exactly
as the standard pipeline encodes it.
"""

from __future__ import annotations

from typing import Any

import torch


def chunk_token_ids(tokenizer: Any, prompt: str, long: bool) -> list[list[int]]:
    """Token ids per window (specials excluded). Without `long`, one window truncated to fit."""
    window = int(tokenizer.model_max_length) - 2
    ids = tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    if not long:
        return [ids[:window]]
    if len(ids) <= window:
        return [ids]
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks: list[list[int]] = []
    while ids:
        if len(ids) <= window:
            chunks.append(ids)
            break
        cut = window
        for i in range(window, window // 2, -1):  # end the chunk after a comma when one is near the end
            if ids[i - 1] == comma:
                cut = i
                break
        chunks.append(ids[:cut])
        ids = ids[cut:]
    return chunks


def window_ids(tokenizer: Any, chunk: list[int]) -> list[int]:
    """One encoder window: start token, the chunk, end token, padding to the window length."""
    length = int(tokenizer.model_max_length)
    ids = [tokenizer.bos_token_id, *chunk, tokenizer.eos_token_id]
    return ids + [tokenizer.pad_token_id] * (length - len(ids))


def token_windows(tokenizer: Any, prompts: list[str], long: bool = False, min_chunks: int = 1) -> torch.Tensor:
    """(batch, chunks, 77) token ids; prompts with fewer chunks are padded with empty windows."""
    chunked = [chunk_token_ids(tokenizer, p, long) for p in prompts]
    n = max(min_chunks, max((len(c) for c in chunked), default=1))
    rows = [
        [window_ids(tokenizer, c) for c in chunks] + [window_ids(tokenizer, [])] * (n - len(chunks))
        for chunks in chunked
    ]
    return torch.tensor(rows, dtype=torch.long)


def encode_windows(
    text_encoder: Any, windows: torch.Tensor, penultimate: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(batch, chunks, 77) ids -> (batch, chunks * 77, hidden) embeddings (the last layer's, or with `penultimate`
    the one before, as SDXL and SD 3 read CLIP), and the projected pooled embedding of each prompt's first window
    where the encoder has a projection (None otherwise)."""
    b, n, length = windows.shape
    device = next(text_encoder.parameters()).device
    out = text_encoder(windows.reshape(b * n, length).to(device), output_hidden_states=penultimate)
    hidden = out.hidden_states[-2] if penultimate else out.last_hidden_state
    pooled = getattr(out, "text_embeds", None)
    if pooled is not None:
        pooled = pooled.reshape(b, n, -1)[:, 0]
    return hidden.reshape(b, n * length, hidden.shape[-1]), pooled


def count_over(tokenizer: Any, prompts: list[str], tokens: int) -> int:
    """How many prompts are longer than `tokens` (specials excluded), and would be cut."""
    return sum(
        len(tokenizer(p, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]) > tokens
        for p in prompts
    )

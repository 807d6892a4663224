import random

import pytest

from cxrgen.tokens import TokenCounter, TokenizerError, clip_tokenizer, find_bpe_file, token_stats


def test_clip_tokenizer_matches_known_ids():
    tok = clip_tokenizer()
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408 and tok.model_max_length == 77


def test_counter_equals_tokenizer_on_varied_prompts():
    tok = clip_tokenizer()
    counter = TokenCounter(tok)
    words = [
        "chest x-ray",
        "age 47 male",
        "view PA",
        "projection AP_horizontal",
        "modality DX",
        "diagnosis COPD signs",
        "loc right upper lobe",
        "pleural effusion",
        "it's",
        "costophrenic  angle",
        "3.5cm",
        "(unchanged)",
        "Ñandú",
        "neumoni\u0301a",  # a decomposed accent (NFD), as macOS writes names
        "derrame pleural e\u0301",
        "pseudo-label",
        "x-ray,",
        "!!",
    ]
    rng = random.Random(0)
    for _ in range(200):
        text = ", ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))
        assert counter.count(text) == counter.exact(text), text


def test_missing_vocabulary_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("CXRGEN_CLIP_BPE", str(tmp_path / "nope.txt.gz"))
    with pytest.raises(TokenizerError, match="does not exist"):
        find_bpe_file()
    monkeypatch.delenv("CXRGEN_CLIP_BPE")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(TokenizerError, match="pip install --no-deps open_clip_torch"):
        find_bpe_file()


def test_token_stats():
    s = token_stats([10, 20, 30, 100, 200], limit=77)
    assert s["over_limit"] == 2 and s["median"] == 30 and s["max"] == 200 and s["over_limit_fraction"] == 0.4

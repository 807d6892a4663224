"""A small T5-style tokenizer (SentencePiece Unigram, "</s>" at the end, "<pad>" id 0) trained here on the words
of chest X-ray prompts, for the random SD 3.5 models of tests and benchmarks: T5's own vocabulary cannot be
downloaded offline, and a tiny random T5 needs a tokenizer of the same kind, not its 32,000 pieces."""

from __future__ import annotations

import functools
from typing import Any

WORDS = (
    "chest x-ray, age 20 30 40 47 50 60 70 80 90 male female, view PA AP lateral, projection PA AP L, modality "
    "CR DX, diagnosis findings normal cardiomegaly pleural effusion pacemaker nodule calcified granuloma "
    "pneumonia atelectasis consolidation infiltrates COPD signs chronic changes scoliosis aortic elongation "
    "unchanged, loc right left upper middle lower lobe cardiac bilateral apical basal costophrenic angle hilar "
    "a bird sitting on a tree photo of an image 0 1 2 3 4 5 6 7 8 9"
)


@functools.cache
def tiny_t5_tokenizer(vocab_size: int = 400) -> Any:
    """transformers' T5TokenizerFast over a Unigram model trained on `WORDS` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,.-()'/:;"),
        show_progress=False,
    )
    tokenizer.train_from_iterator([WORDS] * 4, trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    tokenizer.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=512,
    )

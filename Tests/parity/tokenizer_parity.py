#!/usr/bin/env python3
"""Trains byte-level BPE tokenizers with the `tokenizers` package and writes, into OUT_DIR,
one sub-directory per variant with its tokenizer.json and cases.json: texts with the ids and
decoded text `tokenizers` gives, for Torus to match.

Usage: tokenizer_parity.py OUT_DIR
"""
import json
import os
import random
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers, Regex

out = sys.argv[1]
rng = random.Random(3)
words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "Galto", "Queren", "naïve", "café", "über",
         "日本語", "テキスト", "emoji", "😀", "🚀🚀", "don't", "it's", "we'll", "I'm", "you've", "they're", "1234", "3.14159",
         "x=y+z", "foo_bar", "CamelCase", "\t", "  ", "\n", "\r\n", "!!!", "...", "--", "Ωμέγα", "Привет", "مرحبا"]
corpus = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 30))) for _ in range(3000)]
cases = [
    "Hello, world!", "  leading spaces", "trailing spaces   ", "tabs\tand\nnewlines\r\n\r\nend",
    "The quick brown fox jumps over the lazy dog.", "naïve café über", "日本語のテキスト", "emoji 😀🚀 mixed",
    "don't it's we'll I'm you've they're", "numbers 1234567 3.14159 2024-11-23", "x=y+z; foo_bar(CamelCase)",
    "<|endoftext|>between<|endoftext|>", "special<|endoftext|>inside words", "Ωμέγα Привет مرحبا",
    "\u00a0non-breaking\u2003spaces", "a" * 300, "", " ", "\n\n\n", "mixed 12ab34 cd5",
] + [rng.choice(corpus) for _ in range(40)]

llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
variants = {
    "gpt2": pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "prefix-space": pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
    "llama3-split": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(llama3), behavior="isolated"),
                                             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
    "digits": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
}
for name, pre in variants.items():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    expected = []
    for text in cases:
        ids = tok.encode(text, add_special_tokens=False).ids
        expected.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True)})
    with open(os.path.join(d, "cases.json"), "w") as f:
        json.dump(expected, f, ensure_ascii=False)
print("wrote", ", ".join(variants))

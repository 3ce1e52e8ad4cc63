"""Train a tiny SentencePiece tokenizer with PaliGemma's special-token layout.

The real PaliGemma tokenizer (Gemma's 256k pieces + 1024 ``<locNNNN>`` + 128 ``<segNNN>``) cannot be
downloaded here, so tests train a small one with the same conventions: pad=0, eos=1, bos=2, unk=3,
``"\\n"`` as a single piece, every loc/seg token a single piece, byte fallback, no whitespace
normalisation (Gemma keeps spaces and newlines verbatim).
"""

from __future__ import annotations

import random
from pathlib import Path

from recipes.demo_shapes.tokenizer import train_paligemma_style

WORDS = (
    "a an the of on in at is are with and to what where who how many color colour red green blue "
    "yellow black white orange purple circle square triangle shape shapes cow beach dog cat sitting "
    "standing photo image picture caption answer detect segment describe ocr question en fr de es "
    "left right top bottom big small one two three table chair car tree sky water grass person man "
    "woman child street house window door there this that it yes no text sign"
).split()

LOC_TOKENS = [f"<loc{i:04d}>" for i in range(1024)]
SEG_TOKENS = [f"<seg{i:03d}>" for i in range(128)]


def _corpus(num_lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(num_lines):
        n = rng.randint(3, 12)
        words = [rng.choice(WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words.append(rng.choice("?.!,") if rng.random() < 0.5 else str(rng.randint(0, 999)))
        lines.append(" ".join(words))
    return lines


def train_tiny_tokenizer(path: str | Path, vocab_size: int = 1600, seed: int = 0) -> Path:
    """Train and write ``tokenizer.model`` at ``path``; returns the path."""
    return train_paligemma_style(path, _corpus(3000, seed), vocab_size)

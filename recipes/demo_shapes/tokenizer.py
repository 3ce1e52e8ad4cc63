"""The demo model's SentencePiece tokenizer: PaliGemma's special-token layout on a tiny vocabulary.

Same conventions as the real tokenizer (whose special ids transformers'
convert_paligemma_weights_to_hf.py writes), so the engine treats it like any other: pad=0, eos=1,
bos=2, unk=3, ``"\\n"`` one piece, ``<loc0000>``..``<loc1023>`` and ``<seg000>``..``<seg127>``
single pieces (user-defined symbols), byte fallback for anything the vocabulary lacks, spaces and
newlines kept verbatim. Only the ids differ (loc tokens start at 5, not 256000), which the engine
reads from the file. Trained on the prompts and answers of the shapes task, so every word the task
uses is one or two pieces.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from engine.demo import shapes
from engine.processing.tokenizer import NUM_LOC_TOKENS, NUM_SEG_TOKENS, loc_token, seg_token

VOCAB_SIZE = 1536  # 1413 fixed pieces (specials, "\n", loc, seg, 256 bytes) + letters and merges


def corpus(seed: int = 0, count: int = 4000) -> list[str]:
    """Prompt and answer lines of the shapes task (loc tokens are user-defined, so not needed)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        scene = shapes.random_scene(rng)
        kind = rng.choice(scene.shapes).kind
        for task in shapes.TASKS:
            ex = shapes.make_example(scene, task, None if task == "caption" else kind)
            lines.append(ex.prefix.rstrip("\n"))
            lines.append(ex.suffix.split(">")[-1].strip())
    return lines


def train_demo_tokenizer(path: str | Path, seed: int = 0) -> Path:
    """Train the demo tokenizer and write it to ``path`` (deterministic for a given seed)."""
    return train_paligemma_style(path, corpus(seed), VOCAB_SIZE)


def train_paligemma_style(path: str | Path, lines: Iterable[str], vocab_size: int) -> Path:
    """Train a BPE SentencePiece model on ``lines`` with PaliGemma's special-token layout and write
    it to ``path``. Also what the tests' tiny tokenizers are made with."""
    path = Path(path)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=["\n", *map(loc_token, range(NUM_LOC_TOKENS)), *map(seg_token, range(NUM_SEG_TOKENS))],
        # Gemma's conventions: unknown characters fall back to bytes, digits split, and spaces and
        # newlines are kept verbatim (no dummy prefix, no whitespace normalisation).
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        hard_vocab_limit=False,
        character_coverage=1.0,
        minloglevel=2,
        num_threads=1,
    )
    path.write_bytes(model.getvalue())
    return path

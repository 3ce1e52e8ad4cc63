"""A stand-in tokenizer.model with the real PaliGemma id layout, for full-size random checkpoints.

The real tokenizer cannot be downloaded here. The tiny test tokenizer has PaliGemma's conventions but
only 1600 pieces, so its ``<locNNNN>`` ids start at 5 and the engine would forbid every id past 1600
(``vocab_limit``) -- unlike the real tokenizer, where ``<loc0000>`` is 256000 and only ``<image>``
(257152) and the 64 padding rows lie beyond it. This pads the tiny model's pieces with never-matched
``<unusedN>`` pieces so that ids land where the real ones do: ordinary pieces first, loc tokens at
256000, seg tokens at 257024, 257152 pieces in all.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

GEMMA_PIECES = 256000  # ordinary Gemma pieces; <loc0000> follows
NUM_LOC, NUM_SEG = 1024, 128


def build_full_layout_tokenizer(path: str | Path) -> Path:
    """Write a SentencePiece model with PaliGemma's 257152-piece id layout to ``path``."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    from tests.helpers.tiny_tokenizer import train_tiny_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tiny = train_tiny_tokenizer(Path(tmp) / "tiny.model")
        proto = sp_pb2.ModelProto()
        proto.ParseFromString(tiny.read_bytes())
    pieces = list(proto.pieces)
    special = [p for p in pieces if p.piece.startswith(("<loc", "<seg")) and p.piece.endswith(">")]
    ordinary = [p for p in pieces if p not in special]
    locs = [p for p in special if p.piece.startswith("<loc")]
    segs = [p for p in special if p.piece.startswith("<seg")]
    if len(locs) != NUM_LOC or len(segs) != NUM_SEG:
        raise RuntimeError(f"tiny tokenizer has {len(locs)} loc / {len(segs)} seg pieces; expected {NUM_LOC}/{NUM_SEG}")
    del proto.pieces[:]
    for p in ordinary:
        proto.pieces.append(p)
    # Filler pieces are user-defined symbols no text contains, so they never change how text splits.
    for i in range(GEMMA_PIECES - len(ordinary)):
        proto.pieces.add(piece=f"<unused{i}>", score=0.0, type=sp_pb2.ModelProto.SentencePiece.USER_DEFINED)
    for p in locs + segs:
        proto.pieces.append(p)
    path = Path(path)
    path.write_bytes(proto.SerializeToString())
    return path

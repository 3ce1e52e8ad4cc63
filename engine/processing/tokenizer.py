"""PaliGemma's SentencePiece tokenizer: text <-> token ids, nothing else.

PaliGemma (1 and 2) uses one SentencePiece model: Gemma's 256000 pieces followed by 1024
``<locNNNN>`` (detection boxes) and 128 ``<segNNN>`` (segmentation codes) user-defined pieces.
Ids are read from the model file, never hard-coded, so the tiny test tokenizer (whose loc tokens
start at 5) and the real one (256000) go through the same code.

Contract:
* ``tokenize`` adds no BOS/EOS: the prompt layout (BOS, the ``"\\n"`` separator, EOS) belongs to
  ``engine.processing.preprocessor``, which alone knows the format.
* ``detokenize`` drops BOS/EOS/PAD but keeps ``<locNNNN>``/``<segNNN>`` as text, because detection
  and segmentation answers *are* those tokens (KerasHub does the same).
* Literal ``"<bos>"`` in user text is not turned into the BOS id (it is a control piece, which
  SentencePiece never matches in text), so prompts cannot inject control tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

import sentencepiece as spm

from engine.errors import CheckpointError, InputError

# PaliGemma's special-token convention (transformers' convert_paligemma_weights_to_hf.py, Gemma's vocabulary).
# Checkpoints were trained with these ids, so a tokenizer.model that disagrees is the wrong file, not a
# variant to adapt to.
_EXPECTED_SPECIAL_IDS = {"pad": 0, "eos": 1, "bos": 2, "unk": 3}
_CONVENTIONAL_PIECES = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}
NUM_LOC_TOKENS = 1024
NUM_SEG_TOKENS = 128
TOKENIZER_FILENAME = "tokenizer.model"
IMAGE_TOKEN = "<image>"  # Hugging Face's placeholder; not a piece of the real tokenizer.model


def loc_token(i: int) -> str:
    """Text of the i-th location token, e.g. ``loc_token(51) == "<loc0051>"``."""
    if not 0 <= i < NUM_LOC_TOKENS:
        raise InputError(f"location index must be in [0, {NUM_LOC_TOKENS}), got {i}")
    return f"<loc{i:04d}>"


def seg_token(i: int) -> str:
    """Text of the i-th segmentation token, e.g. ``seg_token(7) == "<seg007>"``."""
    if not 0 <= i < NUM_SEG_TOKENS:
        raise InputError(f"segmentation index must be in [0, {NUM_SEG_TOKENS}), got {i}")
    return f"<seg{i:03d}>"


def _as_id_list(ids: Any) -> list:
    """Turns a list, tuple, numpy array or torch tensor of ids into (nested) Python lists."""
    if hasattr(ids, "tolist"):
        return ids.tolist()
    return list(ids)


class PaliGemmaTokenizer:
    """SentencePiece wrapper with PaliGemma's special ids.

    Args:
        proto: path to a ``tokenizer.model`` file, or the serialized model as bytes.
    """

    def __init__(self, proto: str | Path | bytes) -> None:
        self._source = "<tokenizer bytes>" if isinstance(proto, (bytes, bytearray)) else str(proto)
        self._sp = self._load(proto)
        self._validate()
        ids = {name: self._special_id(name) for name in _EXPECTED_SPECIAL_IDS}
        self.pad_token_id: int = ids["pad"]
        self.end_token_id: int = ids["eos"]
        self.start_token_id: int = ids["bos"]
        self.unk_token_id: int = ids["unk"]
        self._size: int = self._sp.get_piece_size()
        self.newline_token_id: int = self._single_piece_id("\n")
        self._dropped_on_detokenize = frozenset((self.pad_token_id, self.end_token_id, self.start_token_id))

    @classmethod
    def from_preset(cls, directory: str | Path) -> PaliGemmaTokenizer:
        """Loads ``<directory>/tokenizer.model`` (a path to the file itself also works)."""
        directory = Path(directory)
        path = directory if directory.is_file() else directory / TOKENIZER_FILENAME
        return cls(path)

    # ----------------------------------------------------------------------------- loading

    def _load(self, proto: str | Path | bytes) -> spm.SentencePieceProcessor:
        if isinstance(proto, (bytes, bytearray)):
            if not proto:
                raise CheckpointError("tokenizer bytes are empty; pass the contents of tokenizer.model")
            try:
                return spm.SentencePieceProcessor(model_proto=bytes(proto))
            except (RuntimeError, OSError) as e:
                raise CheckpointError(
                    f"tokenizer bytes are not a SentencePiece model ({_first_line(e)}); "
                    "pass the contents of a PaliGemma tokenizer.model"
                ) from None
        path = Path(proto)
        if not path.is_file():
            raise CheckpointError(
                f"tokenizer file not found: {path}; the checkpoint directory must contain "
                f"{TOKENIZER_FILENAME} (re-download the model)"
            )
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"cannot read tokenizer file {path}: {e.strerror or e}") from None
        if not data:
            raise CheckpointError(f"tokenizer file {path} is empty; re-download the model")
        try:
            return spm.SentencePieceProcessor(model_proto=data)
        except (RuntimeError, OSError):
            raise CheckpointError(
                f"tokenizer file {path} is corrupt or not a SentencePiece model; re-download the model"
            ) from None

    def _fail(self, problem: str) -> CheckpointError:
        return CheckpointError(
            f"{self._source} is not a PaliGemma tokenizer: {problem}; use the tokenizer.model "
            "that ships with the PaliGemma checkpoint"
        )

    def _special_id(self, name: str) -> int:
        getter = {"pad": self._sp.pad_id, "eos": self._sp.eos_id, "bos": self._sp.bos_id, "unk": self._sp.unk_id}
        token_id = getter[name]()
        if token_id < 0:
            # Not declared in the model's trainer spec (SentencePiece then answers -1): accept the
            # conventional piece instead, e.g. a "<pad>" added as an ordinary symbol.
            piece = _CONVENTIONAL_PIECES[name]
            candidate = self._sp.piece_to_id(piece)
            if self._sp.id_to_piece(candidate) == piece:
                token_id = candidate
        return token_id

    def _validate(self) -> None:
        if self._sp.get_piece_size() == 0:
            raise self._fail("it has no pieces")
        for name, expected in _EXPECTED_SPECIAL_IDS.items():
            got = self._special_id(name)
            if got != expected:
                raise self._fail(f"its {name} id is {got}, expected {expected}")
        # Detection and segmentation are unusable without these, and the failure would otherwise be
        # silent (vLLM #7115): check the ends of both ranges once at load time.
        for piece in ("\n", loc_token(0), loc_token(NUM_LOC_TOKENS - 1), seg_token(0), seg_token(NUM_SEG_TOKENS - 1)):
            ids = self._sp.encode(piece, out_type=int)
            if len(ids) != 1 or ids[0] == self._sp.unk_id():
                raise self._fail(f"{piece!r} is not a single piece (got ids {ids})")

    def _single_piece_id(self, piece: str) -> int:
        ids = self._sp.encode(piece, out_type=int)
        if len(ids) != 1:
            raise self._fail(f"{piece!r} is not a single piece (got ids {ids})")
        return ids[0]

    # ----------------------------------------------------------------------------- lookups

    def vocabulary_size(self) -> int:
        """Number of SentencePiece pieces (keras-hub's method; 257152 for the real tokenizer)."""
        return self._size

    def get_vocabulary(self) -> list[str]:
        """Every piece, indexed by id (keras-hub's ``get_vocabulary``)."""
        return [self._sp.id_to_piece(i) for i in range(self._size)]

    @property
    def image_token_id(self) -> int:
        """The id Hugging Face's processor gives ``<image>``: the first id after the pieces (257152 for
        the real tokenizer, transformers' image_token_index), unless the model has such a piece itself.
        pali never feeds it (image features are prepended); checkpoints it saves record it."""
        try:
            return self.token_to_id(IMAGE_TOKEN)
        except KeyError:
            return self._size

    def loc_token_id(self, i: int) -> int:
        """Id of ``<locNNNN>`` (256000 + i in the real tokenizer)."""
        return self.token_to_id(loc_token(i))

    def seg_token_id(self, i: int) -> int:
        """Id of ``<segNNN>`` (257024 + i in the real tokenizer)."""
        return self.token_to_id(seg_token(i))

    def token_to_id(self, token: str) -> int:
        """Id of a piece; raises KeyError for a piece the vocabulary does not have."""
        token_id = self._sp.piece_to_id(token)
        # piece_to_id answers unk for unknown pieces; only "<unk>" itself may map there.
        if token_id == self.unk_token_id and token != self._sp.id_to_piece(self.unk_token_id):
            raise KeyError(f"{token!r} is not a piece of {self._source}")
        return token_id

    def id_to_token(self, token_id: int) -> str:
        """Piece text of an id (byte pieces read ``<0x0A>``, spaces read ``▁``)."""
        self._check_id(token_id)
        return self._sp.id_to_piece(int(token_id))

    def _check_id(self, token_id: int) -> None:
        if not 0 <= int(token_id) < self._size:
            raise InputError(f"token id {int(token_id)} is outside the tokenizer's vocabulary [0, {self._size})")

    # ----------------------------------------------------------------------------- text <-> ids

    # A str is also a Sequence[str]; the str overload comes first, so it is the one that applies.
    @overload
    def tokenize(self, text: str) -> list[int]: ...  # type: ignore[overload-overlap]
    @overload
    def tokenize(self, text: Sequence[str]) -> list[list[int]]: ...

    def tokenize(self, text: str | Sequence[str]) -> list[int] | list[list[int]]:
        """Token ids of ``text`` (or of each string of a list), without BOS or EOS."""
        if isinstance(text, str):
            return self._sp.encode(text, out_type=int)
        texts = list(text)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("tokenize() takes a string or a list of strings")
        return self._sp.encode(texts, out_type=int)

    __call__ = tokenize

    @overload
    def detokenize(self, ids: Sequence[int]) -> str: ...
    @overload
    def detokenize(self, ids: Sequence[Sequence[int]]) -> list[str]: ...
    @overload
    def detokenize(self, ids: Any) -> str | list[str]: ...

    def detokenize(self, ids: Any) -> str | list[str]:
        """Text of a sequence of ids (list, tuple, numpy array or tensor), or a list of texts for a
        batch of sequences. BOS, EOS and PAD are dropped; loc/seg tokens stay as their text."""
        ids = _as_id_list(ids)
        if ids and isinstance(ids[0], (list, tuple)):
            return [self._detokenize_one(row) for row in ids]
        return self._detokenize_one(ids)

    def _detokenize_one(self, ids: list) -> str:
        kept = []
        for token_id in ids:
            token_id = int(token_id)
            self._check_id(token_id)
            if token_id not in self._dropped_on_detokenize:
                kept.append(token_id)
        return self._sp.decode(kept)

    def __repr__(self) -> str:
        return f"PaliGemmaTokenizer({self._source!r}, vocabulary_size={self._size})"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

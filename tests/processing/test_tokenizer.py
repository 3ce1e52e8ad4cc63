"""PaliGemmaTokenizer on a tiny SentencePiece model that follows PaliGemma's id conventions.

Expected values come from how the tiny model was trained (pad/eos/bos/unk = 0/1/2/3, "\\n" and
every loc/seg token user-defined pieces) and from SentencePiece itself, read independently here.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch

from engine.errors import CheckpointError
from engine.processing.tokenizer import PaliGemmaTokenizer
from tests.helpers.tiny_tokenizer import LOC_TOKENS, SEG_TOKENS


@pytest.fixture(scope="module")
def raw_sp(tiny_tokenizer_dir: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(tiny_tokenizer_dir / "tokenizer.model"))


def test_special_ids(tiny_tokenizer: PaliGemmaTokenizer, raw_sp: spm.SentencePieceProcessor) -> None:
    assert tiny_tokenizer.pad_token_id == 0
    assert tiny_tokenizer.end_token_id == 1
    assert tiny_tokenizer.start_token_id == 2
    assert tiny_tokenizer.unk_token_id == 3
    assert [tiny_tokenizer.id_to_token(i) for i in range(4)] == ["<pad>", "<eos>", "<bos>", "<unk>"]
    assert tiny_tokenizer.vocabulary_size() == raw_sp.get_piece_size()


def test_keras_hub_vocabulary_methods(tiny_tokenizer: PaliGemmaTokenizer, raw_sp: spm.SentencePieceProcessor) -> None:
    """keras-hub's forms: ``vocabulary_size()`` is a method, ``get_vocabulary()`` lists every piece by id."""
    vocabulary = tiny_tokenizer.get_vocabulary()
    assert len(vocabulary) == tiny_tokenizer.vocabulary_size() == raw_sp.get_piece_size()
    assert vocabulary == [raw_sp.id_to_piece(i) for i in range(raw_sp.get_piece_size())]
    assert vocabulary[:4] == ["<pad>", "<eos>", "<bos>", "<unk>"]
    assert vocabulary[tiny_tokenizer.loc_token_id(51)] == "<loc0051>"
    assert "<image>" not in vocabulary and tiny_tokenizer.image_token_id == len(vocabulary)  # Hugging Face's next id


def test_newline_is_one_piece(tiny_tokenizer: PaliGemmaTokenizer, raw_sp: spm.SentencePieceProcessor) -> None:
    assert tiny_tokenizer.newline_token_id == raw_sp.piece_to_id("\n")
    assert tiny_tokenizer.tokenize("\n") == [tiny_tokenizer.newline_token_id]
    assert tiny_tokenizer.tokenize("\n\n") == [tiny_tokenizer.newline_token_id] * 2


@pytest.mark.parametrize("i", [0, 1, 51, 309, 646, 708, 1023])
def test_loc_tokens_are_single_ids(
    tiny_tokenizer: PaliGemmaTokenizer, raw_sp: spm.SentencePieceProcessor, i: int
) -> None:
    text = f"<loc{i:04d}>"
    token_id = tiny_tokenizer.loc_token_id(i)
    assert token_id == raw_sp.piece_to_id(text)
    assert tiny_tokenizer.tokenize(text) == [token_id]
    assert tiny_tokenizer.id_to_token(token_id) == text


@pytest.mark.parametrize("i", [0, 7, 64, 127])
def test_seg_tokens_are_single_ids(
    tiny_tokenizer: PaliGemmaTokenizer, raw_sp: spm.SentencePieceProcessor, i: int
) -> None:
    text = f"<seg{i:03d}>"
    token_id = tiny_tokenizer.seg_token_id(i)
    assert token_id == raw_sp.piece_to_id(text)
    assert tiny_tokenizer.tokenize(text) == [token_id]


def test_loc_and_seg_ids_are_contiguous(tiny_tokenizer: PaliGemmaTokenizer) -> None:
    # Detection decoding relies on <locNNNN> = first + NNNN, as in the real vocabulary (256000 + i).
    first_loc, first_seg = tiny_tokenizer.loc_token_id(0), tiny_tokenizer.seg_token_id(0)
    assert [tiny_tokenizer.loc_token_id(i) - first_loc for i in (0, 51, 1023)] == [0, 51, 1023]
    assert [tiny_tokenizer.seg_token_id(i) - first_seg for i in (0, 127)] == [0, 127]


def test_box_string_tokenizes_to_four_loc_ids(tiny_tokenizer: PaliGemmaTokenizer) -> None:
    ids = tiny_tokenizer.tokenize("<loc0051><loc0309><loc0708><loc0646> shoe")
    assert ids[:4] == [tiny_tokenizer.loc_token_id(i) for i in (51, 309, 708, 646)]
    assert tiny_tokenizer.detokenize(ids) == "<loc0051><loc0309><loc0708><loc0646> shoe"


@pytest.mark.parametrize("bad", [-1, 1024])
def test_loc_index_out_of_range(tiny_tokenizer: PaliGemmaTokenizer, bad: int) -> None:
    with pytest.raises(ValueError, match="location index"):
        tiny_tokenizer.loc_token_id(bad)


def test_tokenize_adds_no_bos_or_eos(tiny_tokenizer: PaliGemmaTokenizer, raw_sp: spm.SentencePieceProcessor) -> None:
    text = "caption en"
    assert tiny_tokenizer.tokenize(text) == raw_sp.encode(text)
    assert tiny_tokenizer(text) == tiny_tokenizer.tokenize(text)
    assert tiny_tokenizer.tokenize("") == []


def test_literal_bos_text_is_not_the_bos_id(tiny_tokenizer: PaliGemmaTokenizer) -> None:
    assert tiny_tokenizer.start_token_id not in tiny_tokenizer.tokenize("<bos>caption en")


def test_tokenize_batch(tiny_tokenizer: PaliGemmaTokenizer) -> None:
    texts = ["a red circle", "detect cat ; dog"]
    assert tiny_tokenizer.tokenize(texts) == [tiny_tokenizer.tokenize(t) for t in texts]


def test_detokenize_drops_bos_eos_pad_and_keeps_loc_seg(tiny_tokenizer: PaliGemmaTokenizer) -> None:
    t = tiny_tokenizer
    ids = [t.start_token_id, *t.tokenize("cat "), t.loc_token_id(51), t.seg_token_id(12), t.end_token_id, 0, 0]
    assert t.detokenize(ids) == "cat <loc0051><seg012>"


@pytest.mark.parametrize(
    "text",
    ["caption en", "a  red\tcircle\n\nthere", " leading and trailing ", "héllo wörld ✓ 123", "x\ny\n"],
)
def test_round_trip(tiny_tokenizer: PaliGemmaTokenizer, text: str) -> None:
    assert tiny_tokenizer.detokenize(tiny_tokenizer.tokenize(text)) == text


def test_detokenize_accepts_arrays_and_batches(tiny_tokenizer: PaliGemmaTokenizer) -> None:
    a, b = tiny_tokenizer.tokenize(["red", "blue sky"])
    width = max(len(a), len(b))
    padded = [row + [0] * (width - len(row)) for row in (a, b)]
    assert tiny_tokenizer.detokenize(padded) == ["red", "blue sky"]
    assert tiny_tokenizer.detokenize(np.array(padded)) == ["red", "blue sky"]
    assert tiny_tokenizer.detokenize(torch.tensor(a)) == "red"


def test_detokenize_rejects_ids_outside_vocabulary(tiny_tokenizer: PaliGemmaTokenizer) -> None:
    with pytest.raises(ValueError, match=str(tiny_tokenizer.vocabulary_size())):
        tiny_tokenizer.detokenize([tiny_tokenizer.vocabulary_size()])


def test_token_to_id(tiny_tokenizer: PaliGemmaTokenizer) -> None:
    assert tiny_tokenizer.token_to_id("<unk>") == 3
    assert tiny_tokenizer.token_to_id("<loc0051>") == tiny_tokenizer.loc_token_id(51)
    with pytest.raises(KeyError, match="no-such-piece"):
        tiny_tokenizer.token_to_id("no-such-piece")


def test_bytes_and_path_give_the_same_tokenizer(tiny_tokenizer_dir: Path, tiny_tokenizer: PaliGemmaTokenizer) -> None:
    from_bytes = PaliGemmaTokenizer((tiny_tokenizer_dir / "tokenizer.model").read_bytes())
    text = "answer en what color is the circle?"
    assert from_bytes.tokenize(text) == tiny_tokenizer.tokenize(text)
    assert from_bytes.newline_token_id == tiny_tokenizer.newline_token_id


# ----------------------------------------------------------------------------- load errors


def test_missing_tokenizer_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        PaliGemmaTokenizer.from_preset(tmp_path)
    assert str(tmp_path / "tokenizer.model") in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b"", b"this is not a sentencepiece model", bytes(range(256)) * 4])
def test_corrupt_tokenizer_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "tokenizer.model"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        PaliGemmaTokenizer.from_preset(tmp_path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def _train(path: Path, vocab_size: int = 60, **options) -> Path:
    model = io.BytesIO()
    corpus = ["the cat sat on the mat", "a dog ran in the park", "red green blue"] * 50
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        vocab_size=vocab_size,
        minloglevel=2,
        hard_vocab_limit=False,
        num_threads=1,
        **options,
    )
    path.write_bytes(model.getvalue())
    return path


def test_non_paligemma_special_ids_are_rejected(tmp_path: Path) -> None:
    # SentencePiece's defaults (unk=0, bos=1, eos=2, no pad) are the Llama layout, not PaliGemma's.
    path = _train(tmp_path / "tokenizer.model")
    with pytest.raises(CheckpointError, match="not a PaliGemma tokenizer") as err:
        PaliGemmaTokenizer(path)
    assert str(path) in str(err.value)


def test_tokenizer_without_loc_tokens_is_rejected(tmp_path: Path) -> None:
    path = _train(
        tmp_path / "tokenizer.model",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        user_defined_symbols=["\n"],
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
    )
    with pytest.raises(CheckpointError, match="<loc0000>"):
        PaliGemmaTokenizer(path)


def test_pad_declared_only_as_a_piece_is_accepted(tmp_path: Path) -> None:
    # A model trained without a pad id (SentencePiece reports -1) but with "<pad>" at id 0 still
    # follows PaliGemma's layout.
    path = _train(
        tmp_path / "tokenizer.model",
        vocab_size=1250,
        pad_id=-1,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        user_defined_symbols=["<pad>", "\n", *LOC_TOKENS, *SEG_TOKENS],
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
    )
    tokenizer = PaliGemmaTokenizer(path)
    assert (tokenizer.pad_token_id, tokenizer.end_token_id, tokenizer.start_token_id) == (0, 1, 2)
    assert tokenizer.detokenize([2, *tokenizer.tokenize("the cat"), 1, 0]) == "the cat"

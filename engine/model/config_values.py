"""Reading the JSON files of a checkpoint safely, and their values with checks (torch-free).

A checkpoint directory can hold anything: ``config.json`` may be a link to ``/dev/zero`` (read
for ever), a FIFO (waits for ever), gigabytes, ``null``, or sizes of 0 (division by zero) or
10,000,000 layers (a model that never finishes building). ``read_json_file`` reads only a regular
file, up to a size no real one comes near; ``Block`` reads one object's fields, each checked for
its type and a sane range, and says what is wrong in one line starting "bad config.json:".
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from engine.errors import CheckpointError

JSON_LIMIT = 16 * 1024 * 1024  # config.json is ~2 kB, a sharded index ~100 kB
MAX_LAYERS = 1024  # Gemma 2 27B has 46 decoder layers, SigLIP So400m 27
MAX_SIZE = 1 << 20  # widths, vocabulary, resolution: far above any PaliGemma (vocab 257216)

_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def bad(message: str) -> CheckpointError:
    return CheckpointError(f"bad config.json: {message}")


def read_json_file(path: Path, what: str) -> Any:
    """The parsed JSON of ``path``, a regular file of at most JSON_LIMIT bytes (symbolic links to
    one are fine); CheckpointError naming the file otherwise. ``what`` names it in messages."""
    info = os.stat(path)  # FileNotFoundError is the caller's to word
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _SPECIAL if test(info.st_mode)), "a directory or special file")
        raise CheckpointError(f"{path} is not a regular file ({kind}); {what} must be the file itself")
    too_big = CheckpointError(
        f"{path} is {info.st_size} bytes, larger than {what} can be ({JSON_LIMIT} at most); re-download it"
    )
    if info.st_size > JSON_LIMIT:
        raise too_big
    with open(path, "rb") as f:
        data = f.read(JSON_LIMIT + 1)  # capped again: the file may grow after the stat
    if len(data) > JSON_LIMIT:
        raise too_big
    try:
        return json.loads(data)
    except ValueError as e:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        raise CheckpointError(f"{path}: invalid JSON ({e}); re-download the checkpoint") from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(type(value), type(value).__name__)


class Block:
    """One object of config.json (the whole file, ``text_config``, ``vision_config``)."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            what = "it must be a JSON object" if not where else f"{where} must be an object"
            raise bad(f"{what}, got {_kind(data)}")
        self.data = data
        self.where = where

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def block(self, key: str) -> Block:
        return Block(self.data.get(key), self.name(key))

    def count(self, key: str, default: int, limit: int = MAX_SIZE) -> int:
        """A positive integer (``2.0`` is accepted: some exporters write floats) of at most ``limit``."""
        value = self.data.get(key, default)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise bad(f"{self.name(key)} must be a positive integer, got {value!r}")
        if value > limit:
            raise bad(f"{self.name(key)} is {value}, more than any PaliGemma has (at most {limit})")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad(f"{self.name(key)} must be a number, got {value!r}")
        return float(value)

    def optional_number(self, key: str, default: float | None) -> float | None:
        """A number, or None for null/0 (a switched-off softcap or window)."""
        value = self.data.get(key, default)
        if value in (None, 0, 0.0) and not isinstance(value, bool):
            return None
        return self.number(key, 0.0)

    def token_id(self, key: str, default: int) -> int:
        value = self.data.get(key, default)
        if not value:  # null or 0: the default (as transformers' configs leave them)
            return default
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            value = value[0]  # eos_token_id may list several; the first is the one generation stops on
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad(f"{self.name(key)} must be a token id (an integer >= 0), got {value!r}")
        return value

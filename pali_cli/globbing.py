"""Glob matching that survives directory cycles: ``glob.glob(pattern, recursive=True)``'s rules
(``*``, ``?``, ``[...]``, ``**`` for any depth; names starting with ``.`` only for a pattern part
that starts with ``.``), but ``**`` lists each directory once per pattern part, so a symbolic link
back up the tree (``ln -s .. photos/sub/up``) ends the walk instead of looping through it until
the path is too long (or, with two such links, for ever). Directories that cannot be listed are
reported, not skipped silently.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from fnmatch import fnmatchcase

_MAGIC = re.compile(r"[*?\[]")

OnError = Callable[[OSError], None]


def _has_magic(part: str) -> bool:
    return bool(_MAGIC.search(part))


def _entries(directory: str, on_error: OnError) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory or ".") as it:
            return list(it)
    except OSError as e:
        on_error(e)
        return []


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symbolic links, as glob does
    except OSError:  # a link loop, or a target that vanished: not a directory to descend into
        return False


class _Walk:
    def __init__(self, parts: list[str], on_error: OnError) -> None:
        self.parts = parts
        self.on_error = on_error
        self.seen: set[tuple[int, int, int]] = set()  # (device, inode, index of the ** part)
        self.found: list[str] = []

    def walk(self, base: str, i: int) -> None:
        if i == len(self.parts):
            self.found.append(base)
            return
        part = self.parts[i]
        if part == "**":
            self._recurse(base, i)
        elif not _has_magic(part):
            child = os.path.join(base, part)
            if i + 1 == len(self.parts):
                if os.path.lexists(child):
                    self.found.append(child)
            elif os.path.isdir(child):
                self.walk(child, i + 1)
        else:
            hidden_too = part.startswith(".")
            for entry in _entries(base, self.on_error):
                if (hidden_too or not entry.name.startswith(".")) and fnmatchcase(entry.name, part):
                    child = os.path.join(base, entry.name)
                    if i + 1 == len(self.parts):
                        self.found.append(child)
                    elif _is_dir(entry):
                        self.walk(child, i + 1)

    def _recurse(self, base: str, i: int) -> None:
        try:
            info = os.stat(base or ".")
        except OSError:
            return
        key = (info.st_dev, info.st_ino, i)
        if key in self.seen:
            return  # reached again through a link: its matches are already in
        self.seen.add(key)
        self.walk(base, i + 1)  # ** matching no directory at all
        for entry in _entries(base, self.on_error):
            if not entry.name.startswith(".") and _is_dir(entry):
                self._recurse(os.path.join(base, entry.name), i)


def walk_glob(pattern: str, on_error: OnError) -> list[str]:
    """Every path matching ``pattern`` (without braces; see the module docstring), in walk order.
    The literal start stays as typed (``../photos``, ``/abs``, ``./x``), as in glob's results."""
    parts = pattern.split(os.sep)
    base = ""
    if parts[0] == "" and len(parts) > 1:  # absolute: "/x/*" splits into "", "x", "*"
        base, parts = os.sep, parts[1:]
    literal = 0
    while literal < len(parts) - 1 and not _has_magic(parts[literal]):
        literal += 1
    if literal:
        base = os.path.join(base, *parts[:literal])
    walk = _Walk([p for p in parts[literal:] if p], on_error)
    walk.walk(base, 0)
    return walk.found

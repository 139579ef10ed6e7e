"""Catalogue roots: every catalogue CSV and image path a caller names must resolve inside them.

A path is resolved with its symlinks followed, then checked against each root (itself resolved),
so absolute paths elsewhere, `..` and symlinks that point out of a root are refused alike. A path
outside the roots is refused the same way whether or not it exists, so the answer is no oracle
for the server's files: only a path inside a root can be "not found". Messages name the path as
the caller gave it and never anything read from a file.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The shipped sample catalogue and the test fixtures: what `make demo` and the tests read.
DEFAULT_ROOTS = (ROOT / "data", ROOT / "tests" / "fixtures")
MAX_PATH_CHARS = 4096
_SHOWN_CHARS = 200
_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # file:, http://, data:, ...


class PathNotAllowed(ValueError):
    """A path the service will not read: malformed (URL, NUL, relative, too long) or outside the
    catalogue roots (`outside` is True)."""

    def __init__(self, message: str, outside: bool = False):
        super().__init__(message)
        self.outside = outside


def looks_like_url(text: str) -> bool:
    """A scheme prefix (file:, http://, data:, ...): never a path the service reads."""
    return _URL_LIKE.match(text) is not None


def shown(path: str) -> str:
    """The caller's path as it may appear in a message: as given, cut short if long."""
    text = path if len(path) <= _SHOWN_CHARS else path[:_SHOWN_CHARS] + "..."
    return repr(text)


@dataclass(frozen=True)
class CatalogueRoots:
    """The folders whose files a catalogue job may read (resolved, symlinks included)."""

    roots: tuple[Path, ...]

    @classmethod
    def of(cls, paths: Iterable[str | os.PathLike]) -> CatalogueRoots:
        roots = tuple(dict.fromkeys(Path(p).resolve() for p in paths if str(p).strip()))
        if not roots:
            raise ValueError("at least one catalogue root is needed")
        return cls(roots)

    @classmethod
    def parse(cls, value: str | None) -> CatalogueRoots:
        """Roots from an os.pathsep-separated list (CATALOGUE_ROOTS); empty or None: the defaults."""
        if not value or not value.strip():
            return cls.of(DEFAULT_ROOTS)
        return cls.of(value.split(os.pathsep))

    def contains(self, real: Path) -> bool:
        return any(real == root or real.is_relative_to(root) for root in self.roots)

    def resolve(self, path: str | os.PathLike, base: Path | None = None) -> Path:
        """The real path of a regular file inside a root; relative paths are taken from `base`.

        Raises PathNotAllowed for anything else, and FileNotFoundError only for a missing path
        inside a root.
        """
        real, text = self._real(path, base)
        if not stat.S_ISREG(real.stat().st_mode):
            raise PathNotAllowed(f"{shown(text)} is not a regular file")
        return real

    def resolve_dir(self, path: str | os.PathLike) -> Path:
        """Like resolve, for a folder (a job's image folder)."""
        real, text = self._real(path, None)
        if not real.is_dir():
            raise PathNotAllowed(f"{shown(text)} is not a folder")
        return real

    def _real(self, path: str | os.PathLike, base: Path | None) -> tuple[Path, str]:
        text = os.fspath(path)
        if not isinstance(text, str) or not text.strip():
            raise PathNotAllowed("empty path")
        if "\x00" in text:
            raise PathNotAllowed("the path contains a NUL character")
        if len(text) > MAX_PATH_CHARS:
            raise PathNotAllowed(f"the path is longer than {MAX_PATH_CHARS} characters")
        if looks_like_url(text):
            raise PathNotAllowed(
                f"{shown(text)} looks like a URL; give a file path under a catalogue root"
            )
        candidate = Path(text)
        if not candidate.is_absolute():
            if base is None:
                raise PathNotAllowed(f"{shown(text)} is relative; give an absolute path")
            candidate = base / candidate
        outside = PathNotAllowed(f"{shown(text)} is outside the catalogue roots", outside=True)
        # Non-strict first: symlinks are followed as far as they exist, so a missing file outside
        # the roots is refused exactly like an existing one.
        if not self.contains(Path(os.path.realpath(candidate))):
            raise outside
        try:
            real = candidate.resolve(strict=True)
            real.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"no such file: {shown(text)}") from None
        except (OSError, RuntimeError):  # a symlink loop, a permission error on the way
            raise PathNotAllowed(f"{shown(text)} cannot be resolved") from None
        if not self.contains(real):  # it changed between the two looks
            raise outside
        return real, text

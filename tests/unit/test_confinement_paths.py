"""Catalogue roots: what resolves inside them, and every way of reaching outside that is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from atelier.confinement import DEFAULT_ROOTS, MAX_PATH_CHARS, CatalogueRoots, PathNotAllowed


@pytest.fixture()
def layout(tmp_path) -> tuple[CatalogueRoots, Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    (root / "styles.csv").write_text("id,image_path\n")
    (root / "images" / "1.jpg").write_bytes(b"\xff\xd8\xff")
    (outside / "secret.txt").write_text("top secret\n")
    return CatalogueRoots.of([root]), root, outside


def test_a_file_inside_a_root_resolves_to_its_real_path(layout):
    roots, root, _ = layout
    assert roots.resolve(str(root / "styles.csv")) == (root / "styles.csv").resolve()
    assert roots.resolve("images/1.jpg", base=root) == (root / "images" / "1.jpg").resolve()
    (root / "inner-link.jpg").symlink_to(root / "images" / "1.jpg")
    assert roots.resolve(str(root / "inner-link.jpg")) == (root / "images" / "1.jpg").resolve()
    assert roots.resolve_dir(str(root / "images")) == (root / "images").resolve()


@pytest.mark.parametrize(
    "make",
    [
        lambda root, outside: "/etc/passwd",
        lambda root, outside: "/proc/self/environ",
        lambda root, outside: str(outside / "secret.txt"),
        lambda root, outside: str(root / ".." / "outside" / "secret.txt"),
        lambda root, outside: str(root / "images" / ".." / ".." / ".." / ".." / "etc" / "passwd"),
    ],
    ids=["absolute", "proc", "sibling", "dotdot", "deep-dotdot"],
)
def test_paths_outside_the_roots_are_refused(layout, make):
    roots, root, outside = layout
    with pytest.raises(PathNotAllowed, match="outside the catalogue roots") as error:
        roots.resolve(make(root, outside))
    assert error.value.outside
    assert "top secret" not in str(error.value)


def test_a_symlink_pointing_out_of_a_root_is_refused(layout):
    roots, root, outside = layout
    (root / "escape.csv").symlink_to(outside / "secret.txt")
    (root / "dir-escape").symlink_to(outside)
    for path in (root / "escape.csv", root / "dir-escape" / "secret.txt"):
        with pytest.raises(PathNotAllowed, match="outside the catalogue roots"):
            roots.resolve(str(path))
    with pytest.raises(PathNotAllowed, match="outside"):
        roots.resolve_dir(str(root / "dir-escape"))


def test_outside_answers_alike_whether_or_not_the_file_exists(layout):
    """No oracle: a missing file outside the roots gets the same refusal as an existing one."""
    roots, _, outside = layout
    answers = []
    for name in ("secret.txt", "no-such-file.txt"):
        with pytest.raises(PathNotAllowed) as error:
            roots.resolve(str(outside / name))
        answers.append(str(error.value).replace(name, "NAME"))
    assert answers[0] == answers[1]


def test_a_missing_file_inside_a_root_is_not_found(layout):
    roots, root, _ = layout
    with pytest.raises(FileNotFoundError):
        roots.resolve(str(root / "missing.csv"))


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "empty"),
        ("file:///etc/passwd", "URL"),
        ("http://127.0.0.1/", "URL"),
        ("data:text/csv;base64,aWQ=", "URL"),
        ("/tmp/a\x00b.csv", "NUL"),
        ("/" + "a" * (MAX_PATH_CHARS + 1), "longer than"),
        ("relative/styles.csv", "relative"),
    ],
)
def test_malformed_paths_are_refused_with_the_reason(layout, path, reason):
    roots, _, _ = layout
    with pytest.raises(PathNotAllowed, match=reason) as error:
        roots.resolve(path)
    assert not error.value.outside


def test_folders_and_files_are_told_apart(layout):
    roots, root, _ = layout
    with pytest.raises(PathNotAllowed, match="not a regular file"):
        roots.resolve(str(root / "images"))
    with pytest.raises(PathNotAllowed, match="not a folder"):
        roots.resolve_dir(str(root / "styles.csv"))


def test_roots_come_from_a_path_list_or_the_defaults(tmp_path):
    parsed = CatalogueRoots.parse(os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b"), ""]))
    assert parsed.roots == ((tmp_path / "a").resolve(), (tmp_path / "b").resolve())
    assert CatalogueRoots.parse(None).roots == tuple(p.resolve() for p in DEFAULT_ROOTS)
    assert CatalogueRoots.parse("  ").roots == CatalogueRoots.parse(None).roots

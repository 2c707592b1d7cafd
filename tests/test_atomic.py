import os
from pathlib import Path

import pytest

from d2lnet.atomic import atomic_write


def test_completed_write_replaces_the_file_with_ordinary_permissions(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with atomic_write(path, durable=True) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["out.bin"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write(b"half")
        raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_failed_first_write_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "new.bin") as f:
        f.write(b"half")
        raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


def test_missing_folders_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.bin"
    with atomic_write(path) as f:
        f.write(b"data")
    assert path.read_bytes() == b"data"

"""Test sets: folders of ground-truth images, evaluated in colour or as grey (BT.601 Y)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from d2lnet.evaluation import EvalError
from d2lnet.images import IMAGE_EXTENSIONS, ImageError, center_crop, find_images, read_array, to_mode

Mode = Literal["color", "gray"]
DATA_ENV = "D2LNET_DATA"  # a folder holding train/ and test/


@dataclass(frozen=True)
class ImageSet:
    """The ground-truth images of one test set, evaluated in colour or as grey (BT.601 Y).

    ``name`` is the folder's name, with ``-gray`` added when colour images are evaluated as grey,
    so that a set evaluated both ways (BSDS500 in Tables 1 and 2) has two distinct names.
    ``crop``: evaluate centre crops of this size (on the JPEG grid) instead of whole images.
    A grey image in a colour set is replicated to RGB (as training does).
    """

    name: str
    paths: tuple[Path, ...]
    gray: bool
    paper_set: str | None = None  # the set's row in the paper's tables (d2lnet.evaluation.paper.PAPER)
    crop: int | None = None

    @property
    def mode(self) -> Mode:
        return "gray" if self.gray else "color"

    def load(self, path: Path) -> np.ndarray:
        """The ground truth of ``path``: uint8 (H, W, 3) in colour mode, (H, W) in grey mode."""
        try:
            image = to_mode(read_array(path), self.gray)
        except ImageError as error:
            raise EvalError(f"{path}: {error}") from None
        return image if self.crop is None else center_crop(image, self.crop)


def image_set(folder: str | Path, gray: bool, paper_set: str | None = None) -> ImageSet:
    """The images of ``folder`` (not its subfolders), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalError(f"no such folder: {folder}")
    paths = tuple(find_images(folder, recursive=False))
    if not paths:
        raise EvalError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    try:
        from_color = read_array(paths[0]).ndim == 3
    except ImageError as error:
        raise EvalError(f"{paths[0]}: {error}") from None
    if not gray and not from_color:
        raise EvalError(f"{folder} holds grey images: evaluate grey sets with --gray")
    return ImageSet(folder.name + ("-gray" if gray and from_color else ""), paths, gray, paper_set)


def find_data_root(explicit: str | Path | None = None) -> Path:
    """The folder of test sets: ``explicit``, else ``$D2LNET_DATA/test``."""
    if explicit is not None:
        folder = Path(explicit)
    elif os.environ.get(DATA_ENV):
        folder = Path(os.environ[DATA_ENV]) / "test"
    else:
        raise EvalError(f"where are the test sets? give --data-root DIR, or set ${DATA_ENV} to the folder holding test/")
    if not folder.is_dir():
        raise EvalError(f"no test data found in {folder}; give --data-root DIR or set ${DATA_ENV}")
    return folder.resolve()

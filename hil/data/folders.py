"""Image folders with masks, for users' own segmentation data (the Carvana layout), read with OpenCV.

Layout::

    root/images/<name>.<ext>          the inputs (png, jpg, jpeg, bmp, tif, tiff, gif)
    root/masks/<name>[_mask].<ext>    one mask per image: same stem, or the stem + "_mask" (Carvana)

Masks are binarised: a pixel is object when its value exceeds half the mask format's full scale
(127 for 8-bit masks; masks stored as 0/1 count any non-zero value). GIF files (Carvana's masks), which
``cv2.imread`` does not decode, are read as the first frame through ``cv2.VideoCapture``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")


def read_image(path, grayscale: bool = True) -> np.ndarray:
    """An image file as a numpy array: (rows, cols) when ``grayscale``, else (rows, cols, 3) RGB,
    in the file's own integer type (:func:`drivers.images.read_image`; errors as :class:`DatasetError`)."""
    from drivers.images import read_image as read_file
    from onn_core.errors import InputError

    try:
        return read_file(path, "gray" if grayscale else "rgb")
    except InputError as exc:
        raise DatasetError(str(exc)) from exc


def _full_scale(image: np.ndarray) -> float:
    return float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 1.0


class ImageMaskFolder(Dataset):
    """``root/images`` + ``root/masks`` (module docstring): items ``(image, mask)``, image float32
    (C, rows, cols) in [0, 1] (C = 1 when ``grayscale``, else 3 RGB), mask uint8 (1, rows, cols) in {0, 1}.

    ``image_size = (rows, cols)`` resizes both (area averaging for images, nearest for masks); None
    keeps the files' sizes (then all must agree). Everything is read once, at construction
    (``tensors`` = (images, masks)).
    """

    def __init__(self, root, *, image_size: tuple[int, int] | None = None, grayscale: bool = True,
                 images_dir: str = "images", masks_dir: str = "masks"):
        import cv2

        root = Path(root)
        image_dir, mask_dir = root / images_dir, root / masks_dir
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                raise DatasetError(f"{d} is not a folder; expected the layout {root}/{images_dir}/ and {root}/{masks_dir}/")
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
        masks_by_stem = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        xs, ys = [], []
        for path in images:
            mask_path = masks_by_stem.get(path.stem) or masks_by_stem.get(path.stem + "_mask")
            if mask_path is None:
                raise DatasetError(f"no mask for {path.name} in {mask_dir} (expected {path.stem}.<ext> or {path.stem}_mask.<ext>)")
            image, mask = read_image(path, grayscale), read_image(mask_path, grayscale=True)
            if image.shape[:2] != mask.shape[:2]:
                raise DatasetError(f"{path.name} is {image.shape[:2]} but its mask {mask_path.name} is {mask.shape[:2]}")
            scale = _full_scale(image)
            image = image.astype(np.float32) / scale
            mask_scale = _full_scale(mask) if mask.max() > 1 else 1.0
            mask = (mask.astype(np.float32) > mask_scale / 2 if mask_scale > 1 else mask > 0).astype(np.uint8)
            if image_size is not None:
                rows, cols = (int(v) for v in image_size)
                image = cv2.resize(image, (cols, rows), interpolation=cv2.INTER_AREA)
                mask = cv2.resize(mask, (cols, rows), interpolation=cv2.INTER_NEAREST)
            xs.append(torch.from_numpy(image).reshape(image.shape[0], image.shape[1], -1).permute(2, 0, 1))
            ys.append(torch.from_numpy(mask)[None])
        shapes = {tuple(x.shape) for x in xs}
        if len(shapes) > 1:
            raise DatasetError(f"images in {image_dir} differ in size {sorted(shapes)[:3]}; set image_size to resize them")
        self.files = images
        self.tensors = (torch.stack(xs).contiguous(), torch.stack(ys))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        return self.tensors[0][index], self.tensors[1][index]

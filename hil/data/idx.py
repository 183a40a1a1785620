"""MNIST-format IDX files (Fashion-MNIST, MNIST, KMNIST) read into memory; nothing is downloaded.

IDX format: 2 zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64), the number of dimensions, then each dimension as a big-endian uint32, then the data
in big-endian C order. Files may be gzipped (``.gz``, as Debian's ``dataset-fashion-mnist`` ships them).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DatasetError

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SPLITS = ("train", "test")
#: How to get each dataset (shown when its files are missing).
HOW_TO_GET = {
    "fashion_mnist": "install the Debian/Ubuntu package `dataset-fashion-mnist` (files in "
                     "/usr/share/datasets/fashion-mnist), or put the four IDX files from "
                     "https://github.com/zalandoresearch/fashion-mnist in a folder and set data.root to it",
    "mnist": "put the four MNIST IDX files (train-images-idx3-ubyte.gz, ...; e.g. from "
             "https://ossci-datasets.s3.amazonaws.com/mnist/) in a folder and set data.root to it",
    "kmnist": "put the four KMNIST IDX files (http://codh.rois.ac.jp/kmnist/, 'MNIST format') in a "
              "folder and set data.root to it",
}


def read_idx(path) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzipped when the name ends in ``.gz``), native byte order."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DatasetError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DatasetError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(f"{path}: header says shape {shape} ({expected} bytes of data) but the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_file(root, split: str, kind: str) -> Path | None:
    """The IDX file of ``split`` (train/test) and ``kind`` (images/labels) in ``root``: the standard
    names ``train-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (also ``train-images.idx3-ubyte``),
    gzipped or not; None when absent."""
    prefix = "train" if split == "train" else "t10k"
    dims = "idx3" if kind == "images" else "idx1"
    for stem in (f"{prefix}-{kind}-{dims}-ubyte", f"{prefix}-{kind}.{dims}-ubyte"):
        for name in (stem, stem + ".gz"):
            if (Path(root) / name).is_file():
                return Path(root) / name
    return None


class IdxClassification(Dataset):
    """One split of an MNIST-format dataset, in memory: items ``(image, label)``.

    ``image`` is float32 (1, rows, cols) in [0, 1] (uint8 / 255), ``label`` an int64 scalar.
    ``tensors = (images (N, 1, rows, cols) float32, labels (N,) int64)`` for batched access.

    Raises :class:`DatasetError` saying how to get the data when the files are missing.
    """

    def __init__(self, root, split: str = "train", name: str = "fashion_mnist"):
        if split not in SPLITS:
            raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
        root = Path(root)
        files = {kind: find_idx_file(root, split, kind) for kind in ("images", "labels")}
        missing = [kind for kind, f in files.items() if f is None]
        if missing:
            prefix = "train" if split == "train" else "t10k"
            wanted = ", ".join(f"{prefix}-{k}-{'idx3' if k == 'images' else 'idx1'}-ubyte[.gz]" for k in missing)
            how = HOW_TO_GET.get(name, "put the IDX files in a folder and set data.root to it")
            raise DatasetError(f"{name} {split} split not found in {root} (missing {wanted}); to get it, {how}")
        images, labels = read_idx(files["images"]), read_idx(files["labels"])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(f"{name} {split}: images {images.shape} and labels {labels.shape} do not match "
                               "(expected (N, rows, cols) and (N,))")
        self.name, self.split, self.root = name, split, root
        self.tensors = (torch.from_numpy(images).unsqueeze(1).float().div_(255.0), torch.from_numpy(labels.astype(np.int64)))
        self.num_classes = int(labels.max()) + 1 if len(labels) else 0

    def __len__(self) -> int:
        return len(self.tensors[1])

    def __getitem__(self, index: int):
        return self.tensors[0][index], self.tensors[1][index]

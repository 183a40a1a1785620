"""Data: IDX reader (real Fashion-MNIST when installed), image folders, the masking task and its
threshold baseline, HDF5 capture files."""

import gzip
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from hil.data import (
    CAPTURE_SCHEMA, CaptureDataset, DatasetError, IdxClassification, ImageMaskFolder, MaskingDataset, MaskingOptions,
    build_datasets, read_idx, threshold_baseline,
)
from onn_core.errors import ConfigError

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file() and not (FASHION / "train-images-idx3-ubyte").is_file(),
    reason="Fashion-MNIST not installed (apt install dataset-fashion-mnist)",
)


def write_idx(path, array: np.ndarray, code: int):
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(data)


def test_read_idx_round_trip_plain_and_gzipped(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    floats = rng.normal(size=(2, 3)).astype(np.float32)
    write_idx(tmp_path / "a.gz", images, 0x08)
    write_idx(tmp_path / "b", floats, 0x0D)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "b"), floats)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", images, 0x08)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(DatasetError, match="header says shape"):
        read_idx(tmp_path / "short")


def test_idx_folder_with_generated_files(tmp_path):
    rng = np.random.default_rng(1)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (7, 28, 28), dtype=np.uint8), 0x08)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(7, dtype=np.uint8), 0x08)
    ds = IdxClassification(tmp_path, "test", "mnist")
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and int(y) == 3
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.*to get it"):
        IdxClassification(tmp_path, "train", "mnist")


def test_missing_dataset_error_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match="dataset-fashion-mnist"):
        IdxClassification(tmp_path, "train", "fashion_mnist")


@needs_fashion
def test_real_fashion_mnist_shapes_and_labels():
    train, test, num_classes = build_datasets({"dataset": "fashion_mnist"}, "classification")
    assert (len(train), len(test), num_classes) == (60000, 10000, 10)
    assert train.tensors[0].shape == (60000, 1, 28, 28) and test.tensors[0].shape == (10000, 1, 28, 28)
    for ds in (train, test):
        labels = ds.tensors[1]
        assert labels.dtype == torch.int64 and sorted(labels.unique().tolist()) == list(range(10))
        assert torch.bincount(labels).tolist() == [len(ds) // 10] * 10  # balanced classes
    assert float(train.tensors[0].max()) == 1.0 and float(train.tensors[0].min()) == 0.0


def test_image_folder_reads_generated_folder(tmp_path):
    import cv2

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(2)
    truth = []
    for i, name in enumerate(["car_01", "car_02", "car_03"]):
        image = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
        mask = np.zeros((10, 12), dtype=np.uint8)
        mask[2 : 5 + i, 3:9] = 255
        cv2.imwrite(str(tmp_path / "images" / f"{name}.png"), image[..., ::-1])  # OpenCV writes BGR
        mask_name = f"{name}_mask.png" if i == 0 else f"{name}.bmp"
        cv2.imwrite(str(tmp_path / "masks" / mask_name), mask)
        truth.append((image, mask))
    ds = ImageMaskFolder(tmp_path, grayscale=False)
    assert len(ds) == 3
    for (image, mask), (x, y) in zip(truth, ds):
        np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), image / 255.0, atol=1e-7)
        np.testing.assert_array_equal(y[0].numpy(), (mask > 0).astype(np.uint8))
    small = ImageMaskFolder(tmp_path, image_size=(5, 6))
    assert small.tensors[0].shape == (3, 1, 5, 6) and small.tensors[1].shape == (3, 1, 5, 6)
    assert int(small.tensors[1][2].sum()) == 3 * 3  # rows 2..6 -> 1..3, cols 3..8 -> 1..4 at half size
    (tmp_path / "images" / "orphan.png").write_bytes((tmp_path / "images" / "car_01.png").read_bytes())
    with pytest.raises(DatasetError, match="no mask for orphan.png"):
        ImageMaskFolder(tmp_path)


@pytest.fixture(scope="module")
def garments():
    if (FASHION / "train-images-idx3-ubyte.gz").is_file():
        return IdxClassification(FASHION, "test", "fashion_mnist").tensors[0][:1500]
    # stand-in garments (ellipses of random texture) when the dataset is absent
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    a, b = torch.rand(1500, 1, 1, 1, generator=g) * 6 + 5, torch.rand(1500, 1, 1, 1, generator=g) * 6 + 5
    inside = ((yy - 14) / a) ** 2 + ((xx - 14) / b) ** 2 <= 1
    return inside * (0.15 + 0.85 * torch.rand(1500, 1, 28, 28, generator=g))


def test_masking_task_masks_are_exact_for_clean_inputs(garments):
    clean = MaskingOptions(background_max=0, grating_max=0, gradient_max=0, noise_std=0)
    ds = MaskingDataset(garments[:200], clean)
    x, m = ds.tensors
    torch.testing.assert_close(x, garments[:200].float())
    assert torch.equal(m, (garments[:200] > 0.1).to(torch.uint8))
    baseline = threshold_baseline(ds)
    assert baseline.train_miou == 1.0 and baseline.polarity == 1


def test_masking_task_defeats_a_global_threshold(garments):
    train, test = MaskingDataset(garments[:1000], stream=0), MaskingDataset(garments[1000:], stream=1)
    x, m = train.tensors
    assert x.shape == (1000, 1, 28, 28) and m.dtype == torch.uint8 and 0.2 < float(m.float().mean()) < 0.8
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    baseline = threshold_baseline(train, test)
    assert baseline.eval_miou < 0.85 and baseline.train_miou < 0.85
    assert baseline.eval_miou > 0.3  # it is a real baseline, not a broken one
    # the chosen threshold is the best of the grid on train: no other level does better
    for level in (0.2, 0.4, 0.6, 0.8):
        from hil.data.masking import _miou_at

        assert _miou_at(x, m, level, 1) <= baseline.train_miou + 1e-12
    again = MaskingDataset(garments[:1000], stream=0)
    assert torch.equal(again.tensors[0], x)  # seeded: same scenes


def write_captures(path, frames, labels, indices, count=None, **attrs):
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs["schema"], f.attrs["schema_version"] = CAPTURE_SCHEMA, 1
        if count is not None:
            f.attrs["count"] = count
        for k, v in attrs.items():
            f.attrs[k] = v
        f.create_dataset("frames", data=frames, maxshape=(None, *frames.shape[1:]), chunks=(1, *frames.shape[1:]))
        f.create_dataset("labels", data=labels, maxshape=(None,))
        f.create_dataset("indices", data=indices, maxshape=(None,))


def test_capture_file_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 4096, (5, 6, 7), dtype=np.uint16)
    labels, indices = np.array([3, 1, 4, 1, 5]), np.array([10, 11, 12, 13, 14])
    write_captures(tmp_path / "c.h5", frames, labels, indices, count=5, exposure_s=0.01)
    ds = CaptureDataset(tmp_path / "c.h5", frame_scale=4095.0)
    assert len(ds) == 5 and ds.source_indices.tolist() == indices.tolist()
    for i in range(5):
        frame, label = ds[i]
        assert frame.shape == (1, 6, 7) and frame.dtype == torch.float32 and int(label) == labels[i]
        np.testing.assert_allclose(frame[0].numpy(), frames[i] / 4095.0, rtol=1e-6)
    assert float(ds.attrs["exposure_s"]) == 0.01
    with pytest.raises(IndexError):
        ds[5]


def test_capture_file_being_appended_reads_only_complete_rows(tmp_path):
    frames = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
    write_captures(tmp_path / "c.h5", frames, np.arange(4), np.arange(4), count=2)
    ds = CaptureDataset(tmp_path / "c.h5")
    assert len(ds) == 2 and ds.labels.tolist() == [0, 1]
    ds.close()  # HDF5 locks the file: a non-SWMR writer needs the readers closed
    with h5py.File(tmp_path / "c.h5", "a") as f:  # the writer completes a row and one more, then counts
        for name in ("frames", "labels", "indices"):
            f[name].resize(5, axis=0)
        f["frames"][4] = 7.0
        f["labels"][4], f["indices"][4] = 9, 99
        f.attrs["count"] = 5
    assert ds.refresh() == 5 and len(ds) == 5
    assert int(ds[4][1]) == 9 and float(ds[4][0].max()) == 7.0 and int(ds.source_indices[4]) == 99
    # no count attribute: the shortest dataset decides
    write_captures(tmp_path / "d.h5", frames, np.arange(3), np.arange(4))
    assert len(CaptureDataset(tmp_path / "d.h5")) == 3


def test_capture_file_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        CaptureDataset(tmp_path / "none.h5")
    write_captures(tmp_path / "c.h5", np.zeros((2, 3, 3)), np.zeros(2), np.zeros(2), count=3)
    with pytest.raises(DatasetError, match="count = 3"):
        CaptureDataset(tmp_path / "c.h5")
    with h5py.File(tmp_path / "e.h5", "w") as f:
        f.attrs["schema"] = "something/else"
    with pytest.raises(DatasetError, match="expected 'onn-hil/captures'"):
        CaptureDataset(tmp_path / "e.h5")


def test_build_datasets_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="data.dataset"):
        build_datasets({"dataset": "imagenet"}, "classification")
    with pytest.raises(ConfigError, match="data.dataset"):
        build_datasets({"dataset": "fashion_masking"}, "classification")
    with pytest.raises(ConfigError, match="data.root"):
        build_datasets({"dataset": "mnist"}, "classification")
    with pytest.raises(ConfigError, match="data.options.noise_std"):
        MaskingOptions(noise_std=-1.0)
    with pytest.raises(ConfigError, match="data.options"):
        build_datasets({"dataset": "fashion_masking", "options": {"clutter": 1}}, "segmentation")
    write_captures(tmp_path / "c.h5", np.zeros((2, 3, 3)), np.zeros(2), np.zeros(2), count=2)
    train, test, classes = build_datasets({"dataset": "captures", "root": str(tmp_path / "c.h5"),
                                           "options": {"num_classes": 4}}, "classification")
    assert (len(train), test, classes) == (2, None, 4)


SWMR_WRITER = r"""
import sys
import h5py
import numpy as np

path = sys.argv[1]
with h5py.File(path, "w", libver="latest") as f:
    f.attrs["schema"], f.attrs["schema_version"] = "onn-hil/captures", 1
    frames = f.create_dataset("frames", shape=(0, 2, 2), maxshape=(None, 2, 2), chunks=(1, 2, 2), dtype="f4")
    labels = f.create_dataset("labels", shape=(0,), maxshape=(None,), dtype="i8")
    indices = f.create_dataset("indices", shape=(0,), maxshape=(None,), dtype="i8")
    count = f.create_dataset("count", data=np.zeros(1, dtype="i8"))
    f.swmr_mode = True

    def append(i):
        for d in (frames, labels, indices):
            d.resize(i + 1, axis=0)
        frames[i], labels[i], indices[i] = np.full((2, 2), i), i, 100 + i
        for d in (frames, labels, indices):
            d.flush()
        count[0] = i + 1
        count.flush()

    for i in range(2):
        append(i)
    frames.resize(3, axis=0)  # a row in flight: its frame slot exists, it is not counted
    frames.flush()
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(2, 4):
        append(i)
    print("more", flush=True)
    sys.stdin.readline()
"""


def test_capture_file_read_live_while_a_swmr_writer_appends(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "live.h5"
    writer = subprocess.Popen([sys.executable, "-c", SWMR_WRITER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        ds = CaptureDataset(path, live=True)
        assert len(ds) == 2 and ds.source_indices.tolist() == [100, 101]
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "more"
        assert ds.refresh() == 4
        assert int(ds[3][1]) == 3 and float(ds[3][0].mean()) == 3.0
        ds.close()
        writer.stdin.write("done\n")
        writer.stdin.flush()
        assert writer.wait(timeout=60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()

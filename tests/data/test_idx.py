"""IDX files: round trips, gzip, bad magic/truncation, and the MNIST loader on files written here."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from uncertlr.data import load_mnist, read_idx, write_idx

_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@settings(max_examples=40)
@given(
    arr=st.sampled_from(_DTYPES).flatmap(
        lambda dt: hnp.arrays(
            dt,
            hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
            elements={"allow_nan": False} if np.dtype(dt).kind == "f" else None,
        )
    ),
    gz=st.booleans(),
)
def test_idx_round_trips_every_type(tmp_path_factory, arr, gz):
    path = tmp_path_factory.mktemp("idx") / ("a.idx" + (".gz" if gz else ""))
    write_idx(path, arr)
    back = read_idx(path)
    assert back.dtype == arr.dtype.newbyteorder("=") and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz


def test_header_layout_is_the_mnist_one(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte", np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    raw = path.read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03"
    assert [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(3)] == [2, 3, 4]
    assert raw[16:] == bytes(range(24))
    # an int32 file is big-endian on disk
    p2 = write_idx(tmp_path / "y", np.array([1, 256], dtype=np.int32))
    assert p2.read_bytes()[8:] == b"\x00\x00\x00\x01\x00\x00\x01\x00"


def test_bad_files_give_errors_naming_the_file(tmp_path):
    bad = tmp_path / "wrong-magic-idx1-ubyte"
    bad.write_bytes(b"\x08\x03\x00\x00" + bytes(20))
    with pytest.raises(ValueError, match="wrong-magic-idx1-ubyte is not an IDX file: magic number 08030000"):
        read_idx(bad)
    good = write_idx(tmp_path / "t.idx", np.zeros((4, 5), np.uint8)).read_bytes()
    (tmp_path / "short.idx").write_bytes(good[:-3])
    with pytest.raises(ValueError, match=r"short\.idx is truncated"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "long.idx").write_bytes(good + b"\x00")
    with pytest.raises(ValueError, match=r"long\.idx is longer than its header says"):
        read_idx(tmp_path / "long.idx")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(ValueError, match=r"broken\.gz: corrupt or truncated gzip"):
        read_idx(tmp_path / "broken.gz")
    with pytest.raises(TypeError, match="cannot store dtype"):
        write_idx(tmp_path / "c.idx", np.zeros(3, np.complex64))


def _fake_mnist(folder, n_train=12, n_test=5, gz=True):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    imgs = {
        k: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        for k, n in (("train", n_train), ("t10k", n_test))
    }
    labs = {k: rng.integers(0, 10, n).astype(np.uint8) for k, n in (("train", n_train), ("t10k", n_test))}
    for k in ("train", "t10k"):
        write_idx(folder / f"{k}-images-idx3-ubyte{ext}", imgs[k])
        write_idx(folder / f"{k}-labels-idx1-ubyte{ext}", labs[k])
    return imgs, labs


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_reads_the_four_files(tmp_path, gz):
    imgs, labs = _fake_mnist(tmp_path / "fashion-mnist", gz=gz)
    s = load_mnist(tmp_path, dataset="fashion-mnist")
    assert s.x_train.shape == (12, 1, 28, 28) and s.x_test.shape == (5, 1, 28, 28) and s.num_classes == 10
    np.testing.assert_allclose(s.x_train[:, 0] * 255, imgs["train"], atol=1e-4)
    np.testing.assert_array_equal(s.y_test, labs["t10k"].astype(np.int64))
    assert load_mnist(tmp_path, dataset="fashion-mnist", flat=True).x_train.shape == (12, 784)


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\[\.gz\] not found in .*mnist"):
        load_mnist(tmp_path)
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_mnist(tmp_path, dataset="cifar")
    _fake_mnist(tmp_path / "mnist")
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz: expected 5 labels"):
        load_mnist(tmp_path)

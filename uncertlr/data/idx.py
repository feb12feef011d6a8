"""MNIST-format IDX files (plain or gzipped) and the MNIST / Fashion-MNIST loaders.

An IDX file is a 4-byte magic number — two zero bytes, a type code, the number of
dimensions — then one big-endian ``int32`` per dimension, then the data, big-endian,
in C order. :func:`read_idx` and :func:`write_idx` handle every IDX type; a name
ending in ``.gz`` is gzipped.

Example:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from uncertlr.data import read_idx, write_idx
    >>> path = write_idx(Path(tempfile.mkdtemp()) / "x-idx3-ubyte.gz", np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    >>> read_idx(path).shape
    (2, 3, 4)
"""

from __future__ import annotations

import gzip
import io
import os
import struct
from pathlib import Path
from typing import Literal

import numpy as np

from uncertlr._io import atomic_write
from uncertlr.data.digits import Split
from uncertlr.data.fetch import download as _download
from uncertlr.data.paths import data_dir

__all__ = ["MNIST_SOURCES", "load_mnist", "read_idx", "write_idx"]

# IDX type code -> big-endian numpy dtype
_CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_DTYPES = {np.dtype(v).newbyteorder("="): k for k, v in _CODES.items()}

#: Public sources with the digests their maintainers publish (MD5; the same ones torchvision uses).
MNIST_SOURCES: dict[str, dict[str, object]] = {
    "mnist": {
        "url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "algorithm": "md5",
        "files": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
    "fashion-mnist": {
        "url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "algorithm": "md5",
        "files": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
}


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from exc


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzipped or not, detected from its content) into a native-endian array.

    Raises:
        ValueError: the file is not IDX (bad magic number, unknown type code) or is
            truncated/too long for the shape its header declares; the message names the file.
    """
    path = Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise ValueError(f"{path} is not an IDX file: {len(buf)} bytes, shorter than the 4-byte magic number")
    zero, code, ndim = buf[:2], buf[2], buf[3]
    if zero != b"\x00\x00" or code not in _CODES:
        raise ValueError(
            f"{path} is not an IDX file: magic number {buf[:4].hex()} (expected 0000 then a type code in "
            f"{', '.join(f'{c:02x}' for c in _CODES)} and the number of dimensions)"
        )
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise ValueError(
            f"{path} is truncated: its header declares {ndim} dimensions but the file ends first"
        )
    shape = struct.unpack(f">{ndim}i", buf[4:header]) if ndim else ()
    if any(d < 0 for d in shape):
        raise ValueError(f"{path}: negative dimension in the IDX header {shape}")
    dtype = np.dtype(_CODES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(buf) - header
    if found != expected:
        what = "truncated" if found < expected else "longer than its header says"
        raise ValueError(
            f"{path} is {what}: shape {tuple(shape)} needs {expected} bytes of data, found {found}"
        )
    return np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``), atomically.

    Supported dtypes: uint8, int8, int16, int32, float32, float64.
    """
    a = np.asarray(array)
    key = a.dtype.newbyteorder("=")
    if key not in _DTYPES:
        raise TypeError(
            f"IDX cannot store dtype {a.dtype}; use one of uint8, int8, int16, int32, float32, float64"
        )
    if a.ndim > 255:
        raise ValueError(f"IDX stores at most 255 dimensions; got {a.ndim}")
    head = bytes([0, 0, _DTYPES[key], a.ndim]) + struct.pack(f">{a.ndim}i", *a.shape)
    payload = head + np.ascontiguousarray(a, dtype=np.dtype(_CODES[_DTYPES[key]])).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        bio = io.BytesIO()
        with gzip.GzipFile(fileobj=bio, mode="wb", mtime=0) as gz:
            gz.write(payload)
        payload = bio.getvalue()
    return atomic_write(path, lambda f: f.write(payload))


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    dataset: Literal["mnist", "fashion-mnist"] = "mnist",
    download: bool = False,
    flat: bool = False,
    progress: bool = True,
) -> Split:
    """MNIST or Fashion-MNIST from the four standard IDX files, scaled to [0, 1].

    Files are looked up in ``<data dir>/mnist`` or ``<data dir>/fashion-mnist`` (see
    :func:`~uncertlr.data.data_dir`), gzipped or not: ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``.

    Args:
        root: the data folder (default :func:`~uncertlr.data.data_dir`).
        dataset: ``"mnist"`` or ``"fashion-mnist"``.
        download: fetch missing files from the public source (MD5-verified) first.
        flat: ``x[N, 784]`` instead of images ``x[N, 1, 28, 28]``.
        progress: show download progress.

    Returns:
        :class:`~uncertlr.data.Split`: the official 60,000 / 10,000 split.

    Raises:
        FileNotFoundError: a file is missing and ``download`` is False (the message lists the folder).
        ValueError: a file is not valid IDX, or images and labels disagree in number.
    """
    if dataset not in MNIST_SOURCES:
        raise ValueError(f"dataset must be one of {sorted(MNIST_SOURCES)}; got {dataset!r}")
    folder = data_dir(root) / dataset
    src = MNIST_SOURCES[dataset]
    files: dict[str, str] = src["files"]  # type: ignore[assignment]
    if download:
        for name, digest in files.items():
            if _find(folder, name.removesuffix(".gz")) is None:
                _download(
                    f"{src['url']}{name}",
                    folder / name,
                    checksum=digest,
                    algorithm=str(src["algorithm"]),
                    progress=progress,
                )
    arrays = {}
    for part in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        path = _find(folder, part)
        if path is None:
            raise FileNotFoundError(
                f"{dataset}: {part}[.gz] not found in {folder}; pass download=True, or put the IDX files there "
                f"(set UNCERTLR_DATA or --data-dir to the folder holding '{dataset}/')"
            )
        arrays[part] = (path, read_idx(path))

    def images(part: str) -> np.ndarray:
        path, a = arrays[part]
        if a.ndim != 3 or a.dtype != np.uint8:
            raise ValueError(f"{path}: expected uint8 images [N, H, W]; got {a.dtype} {a.shape}")
        x = (a.astype(np.float32) / 255.0)[:, None]
        return x.reshape(len(x), -1) if flat else x

    def labels(part: str, n: int) -> np.ndarray:
        path, a = arrays[part]
        if a.ndim != 1 or len(a) != n:
            raise ValueError(f"{path}: expected {n} labels (one per image); got shape {a.shape}")
        return a.astype(np.int64)

    xtr, xte = images("train-images-idx3-ubyte"), images("t10k-images-idx3-ubyte")
    return Split(
        xtr, labels("train-labels-idx1-ubyte", len(xtr)), xte, labels("t10k-labels-idx1-ubyte", len(xte)), 10
    )

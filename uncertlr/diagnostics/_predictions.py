"""What the report reads of ``predictions.npz``: per model, the model average and the mean entropy, streamed.

A run's ``{name}_test`` / ``{name}_ood`` arrays are ``[S, N, C]`` probabilities; the figures
need only the model average ``p̄[N, C]`` (reliability, predictive entropy) and the mean
entropy of the draws ``E_s H[p_s][N]`` (its aleatoric part; mutual information is the
difference). :func:`read_prediction_summaries` reads each array's ``.npy`` header from the
zip, then streams its data one draw at a time into those two sums, so memory is
``O(N × C)`` whatever ``S`` is — a small file that inflates to gigabytes (or a legitimately
long run of draws) never lands in memory at once. Every refusal names the file and the key.

Example:
    >>> import tempfile, numpy as np
    >>> from uncertlr.runfolder import write_predictions
    >>> run = tempfile.mkdtemp()
    >>> p = np.full((4, 2, 2), 0.5)
    >>> _ = write_predictions(run, {"labels": np.array([0, 1]), "bnn_test": p})
    >>> s = read_prediction_summaries(run, ["bnn_test", "labels"])
    >>> s["bnn_test"].num_samples, s["bnn_test"].mean.tolist(), s["labels"].tolist()
    (4, [[0.5, 0.5], [0.5, 0.5]], [0, 1])
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

from uncertlr.runfolder import PREDICTIONS_FILE

__all__ = ["MAX_SUMMARY_BYTES", "PredictionSummary", "read_prediction_summaries"]

#: Largest ``N × C`` summary (and ``labels`` array) the report holds in memory, in bytes.
MAX_SUMMARY_BYTES = 1 << 28


class PredictionSummary(NamedTuple):
    """One model's predictions reduced over draws.

    Attributes:
        mean: the model average ``p̄ = mean_s p_s``, ``[N, C]`` (float64).
        expected_entropy: ``mean_s H[p_s]``, ``[N]`` nats (the aleatoric part of the uncertainty).
        num_samples: ``S`` (1 for a point prediction).
    """

    mean: np.ndarray
    expected_entropy: np.ndarray
    num_samples: int

    @property
    def total(self) -> np.ndarray:
        """Predictive entropy ``H[p̄]`` ``[N]``."""
        p = np.clip(self.mean, 0.0, 1.0)
        return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)

    @property
    def epistemic(self) -> np.ndarray:
        """Mutual information ``H[p̄] - E_s H[p_s]`` ``[N]`` (clipped at 0 against rounding)."""
        return np.maximum(self.total - self.expected_entropy, 0.0)


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 0.0, 1.0)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def _header(f: IO[bytes], where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{where} is not a readable array ({exc})") from exc
    if dtype.hasobject or dtype.fields is not None:
        raise ValueError(f"{where} holds {dtype}, not numbers")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _read_exact(f: IO[bytes], n: int, where: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{where} is truncated ({len(data)} of {n} bytes)")
    return data


def _labels(f: IO[bytes], shape: tuple[int, ...], fortran: bool, dtype: np.dtype, where: str) -> np.ndarray:
    if len(shape) != 1:
        raise ValueError(f"{where} must be labels [N]; got shape {shape}")
    if dtype.kind not in "iu":
        raise ValueError(f"{where} must hold integer class labels; got {dtype}")
    if shape[0] * dtype.itemsize > MAX_SUMMARY_BYTES:
        raise ValueError(
            f"{where} ({shape[0]:,} labels) is larger than the report reads ({MAX_SUMMARY_BYTES:,} bytes)"
        )
    return np.frombuffer(_read_exact(f, shape[0] * dtype.itemsize, where), dtype=dtype).copy()


def _summary(
    f: IO[bytes], shape: tuple[int, ...], fortran: bool, dtype: np.dtype, where: str
) -> PredictionSummary:
    if len(shape) not in (2, 3) or 0 in shape or shape[-1] < 2:
        raise ValueError(f"{where} must be probabilities [S, N, C] or [N, C] with C >= 2; got shape {shape}")
    if dtype.kind != "f":
        raise ValueError(f"{where} must hold floating-point probabilities; got {dtype}")
    draws, n, c = (1, *shape) if len(shape) == 2 else shape
    if n * c * 8 > MAX_SUMMARY_BYTES:
        raise ValueError(f"{where} ({n:,} inputs x {c:,} classes) is larger than the report reads")
    if fortran and draws > 1:  # column-major: a draw is not contiguous; refuse rather than read it all
        raise ValueError(f"{where} is stored in Fortran order; the report reads C-ordered [S, N, C] arrays")
    total = np.zeros((n, c))
    ent = np.zeros(n)
    per_draw = n * c * dtype.itemsize
    for s in range(draws):
        p = np.frombuffer(_read_exact(f, per_draw, f"{where} (draw {s})"), dtype=dtype)
        p = p.reshape((c, n)).T if fortran else p.reshape(n, c)
        p = p.astype(np.float64)
        if not np.isfinite(p).all():
            raise ValueError(f"{where}: draw {s} holds NaN or inf")
        if p.min() < -1e-6 or p.max() > 1 + 1e-6 or np.abs(p.sum(-1) - 1).max() > 1e-3:
            raise ValueError(f"{where}: draw {s} is not probabilities (values in [0, 1], rows summing to 1)")
        total += p
        ent += _entropy(p)
    return PredictionSummary(total / draws, ent / draws, draws)


def read_prediction_summaries(run: str | os.PathLike[str], keys: Iterable[str]) -> dict[str, Any]:
    """``{key: PredictionSummary}`` for probability arrays and ``{"labels": array}`` from ``predictions.npz``.

    Only the requested keys are read, one draw at a time; keys the file lacks are left out
    (an empty dict when the file is absent).

    Raises:
        ValueError: the file or one of the requested arrays is damaged or not what the report
            draws; the message names the file and the key.
    """
    path = Path(run) / PREDICTIONS_FILE
    if not path.is_file():
        return {}
    out: dict[str, Any] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            for key in keys:
                member = f"{key}.npy"
                if member not in names:
                    continue
                where = f"{path}: {key!r}"
                with zf.open(member) as f:
                    shape, fortran, dtype = _header(f, where)
                    if math.prod(shape) * dtype.itemsize != zf.getinfo(member).file_size - f.tell():
                        raise ValueError(f"{where}: its header ({shape}, {dtype}) does not match its size")
                    read = _labels if key == "labels" else _summary
                    out[key] = read(f, shape, fortran, dtype, where)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError) as exc:
        raise ValueError(f"{path} is not a readable predictions file: {type(exc).__name__}: {exc}") from exc
    return out

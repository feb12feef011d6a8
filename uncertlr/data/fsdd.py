"""The Free Spoken Digit Dataset (FSDD): spoken digits 0-9, 8 kHz mono WAV files.

A folder of ``{digit}_{speaker}_{index}.wav`` files (the published dataset has six
speakers with 50 recordings of each digit; any subset of speakers works). Two splits:

* ``"official"`` — the dataset's own: recordings with index 0-4 are the test set,
  5-49 the training set (10% test, every speaker on both sides);
* ``"speaker"`` — every recording of ``test_speakers`` in the test set, everybody
  else's in the training set (speaker-independent recognition).

Source: https://github.com/Jakobovski/free-spoken-digit-dataset, CC BY-SA 4.0
("Free Spoken Digit Dataset, Zohar Jackson and contributors").

Example:
    >>> from uncertlr.data import parse_recording_name
    >>> parse_recording_name("7_jackson_32.wav")
    (7, 'jackson', 32)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from uncertlr.data.audio import LogMel, read_wav, wav_features
from uncertlr.data.fetch import download as _download
from uncertlr.data.fetch import extract_archive
from uncertlr.data.paths import data_dir

__all__ = [
    "FSDD_ARCHIVE",
    "OFFICIAL_TEST_INDICES",
    "Recording",
    "SpeechSplit",
    "fsdd_folder",
    "list_recordings",
    "load_fsdd",
    "parse_recording_name",
    "read_recordings",
    "split_recordings",
]

_NAME = re.compile(r"^(\d)_([A-Za-z][A-Za-z0-9-]*)_(\d+)\.wav$")

#: Recording indices of the dataset's official test set (5-49 are training).
OFFICIAL_TEST_INDICES = range(0, 5)

#: The FSDD release fetched by ``download=True``: tag v1.0.9 of the GitHub repository, with
#: the size and SHA-256 that tensorflow_datasets records for the same URL
#: (``tensorflow_datasets/audio/spoken_digit/checksums.tsv``).
FSDD_ARCHIVE = {
    "url": "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/v1.0.9.tar.gz",
    "sha256": "8bc44cde129d505cbbb6b365c09f80c663f2aa77578afc634e6141a2f87100c0",
    "size": 11975353,
}


class Recording(NamedTuple):
    """One FSDD file: its path, the spoken ``digit``, the ``speaker`` and the recording ``index``."""

    path: Path
    digit: int
    speaker: str
    index: int


class SpeechSplit(NamedTuple):
    """Features and labels of an FSDD split.

    The first five fields match :class:`~uncertlr.data.Split`: ``x_*[N, F, T]``
    float32 features, ``y_*[N]`` int64 digits, ``num_classes`` = 10. Then the speaker
    of every row (``speakers_*[N]``, str) and the :class:`Recording` of every row
    (``train``/``test``), e.g. to re-read the audio and corrupt it.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    speakers_train: np.ndarray
    speakers_test: np.ndarray
    train: list[Recording]
    test: list[Recording]


def parse_recording_name(name: str) -> tuple[int, str, int]:
    """``"{digit}_{speaker}_{index}.wav"`` -> ``(digit, speaker, index)``.

    Raises:
        ValueError: the name does not follow the pattern.
    """
    m = _NAME.match(name)
    if m is None:
        raise ValueError(
            f"{name!r} is not an FSDD recording name; expected '{{digit}}_{{speaker}}_{{index}}.wav'"
        )
    return int(m.group(1)), m.group(2), int(m.group(3))


def fsdd_folder(
    root: str | os.PathLike[str] | None = None, *, download: bool = False, progress: bool = True
) -> Path:
    """The folder of FSDD recordings: ``<data dir>/fsdd/recordings``.

    ``root`` may also point straight at a folder of ``.wav`` files. With
    ``download=True`` a missing folder is filled from :data:`FSDD_ARCHIVE` (SHA-256 verified).

    Raises:
        FileNotFoundError: the folder does not exist and ``download`` is False.
    """
    base = data_dir(root)
    if base.is_dir() and any(base.glob("*.wav")):
        return base
    folder = base / "fsdd" / "recordings"
    if folder.is_dir() and any(folder.glob("*.wav")):
        return folder
    if not download:
        raise FileNotFoundError(
            f"no FSDD recordings in {folder}; pass download=True, or set UNCERTLR_DATA / --data-dir to the folder "
            "that holds 'fsdd/recordings'"
        )
    _download_fsdd(base / "fsdd", progress=progress)
    return folder


def _download_fsdd(target: Path, *, progress: bool) -> None:
    archive = target / "free-spoken-digit-dataset-1.0.9.tar.gz"
    _download(FSDD_ARCHIVE["url"], archive, checksum=str(FSDD_ARCHIVE["sha256"]), progress=progress)  # type: ignore[arg-type]
    extract_archive(
        archive,
        target,
        strip_components=1,
        include=lambda p: p.startswith("recordings/") and p.endswith(".wav"),
    )


def list_recordings(folder: str | os.PathLike[str]) -> list[Recording]:
    """Every ``{digit}_{speaker}_{index}.wav`` in ``folder``, sorted by (speaker, digit, index).

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: the folder holds no ``.wav`` files, or a ``.wav`` file whose name does
            not follow the pattern (the message names it).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"FSDD folder {folder} does not exist")
    recs = []
    for p in folder.iterdir():
        if p.suffix.lower() != ".wav":
            continue
        try:
            digit, speaker, index = parse_recording_name(p.name)
        except ValueError as exc:
            raise ValueError(f"{p}: {exc}") from None
        recs.append(Recording(p, digit, speaker, index))
    if not recs:
        raise ValueError(
            f"{folder} holds no FSDD recordings (*.wav files named '{{digit}}_{{speaker}}_{{index}}.wav')"
        )
    recs.sort(key=lambda r: (r.speaker, r.digit, r.index))
    return recs


def split_recordings(
    recordings: Sequence[Recording],
    *,
    split: Literal["official", "speaker"] = "official",
    test_speakers: Iterable[str] | None = None,
) -> tuple[list[Recording], list[Recording]]:
    """Split recordings into ``(train, test)``.

    Args:
        recordings: from :func:`list_recordings`.
        split: ``"official"`` (index 0-4 test, the rest train) or ``"speaker"``
            (``test_speakers``' recordings test, everybody else's train).
        test_speakers: the held-out speakers (required for ``"speaker"``; must be present).

    Example:
        >>> from pathlib import Path
        >>> from uncertlr.data import Recording, split_recordings
        >>> recs = [Recording(Path(f"{d}_ann_{i}.wav"), d, "ann", i) for d in range(10) for i in range(50)]
        >>> train, test = split_recordings(recs)
        >>> len(train), len(test)
        (450, 50)
    """
    if split == "official":
        if test_speakers is not None:
            raise ValueError("test_speakers applies to split='speaker' only")
        test = [r for r in recordings if r.index in OFFICIAL_TEST_INDICES]
        train = [r for r in recordings if r.index not in OFFICIAL_TEST_INDICES]
        return train, test
    if split == "speaker":
        held = set([test_speakers] if isinstance(test_speakers, str) else (test_speakers or ()))
        present = sorted({r.speaker for r in recordings})
        if not held:
            raise ValueError(f"split='speaker' needs test_speakers, some of {present}")
        missing = held - set(present)
        if missing:
            raise ValueError(
                f"test speakers {sorted(missing)} have no recordings here; speakers present: {present}"
            )
        if held == set(present):
            raise ValueError(f"holding out every speaker ({present}) leaves no training data")
        return [r for r in recordings if r.speaker not in held], [r for r in recordings if r.speaker in held]
    raise ValueError(f"split must be 'official' or 'speaker'; got {split!r}")


def load_fsdd(
    root: str | os.PathLike[str] | None = None,
    *,
    features: LogMel | None = None,
    split: Literal["official", "speaker"] = "official",
    test_speakers: Iterable[str] | None = None,
    speakers: Iterable[str] | None = None,
    keep: Callable[[Recording], bool] | None = None,
    cache_dir: str | os.PathLike[str] | None | bool = None,
    download: bool = False,
    progress: Any = False,
) -> SpeechSplit:
    """FSDD as features: log-mel spectrograms (default) or MFCCs with a fixed frame count.

    Args:
        root: the data folder (see :func:`~uncertlr.data.data_dir`) or a folder of WAV files.
        features: :class:`~uncertlr.data.LogMel` (default ``LogMel()``: ``[N, 40, 64]``)
            or :class:`~uncertlr.data.MFCC`.
        split: ``"official"`` or ``"speaker"`` (see :func:`split_recordings`).
        test_speakers: held-out speakers for ``split="speaker"``.
        speakers: use only these speakers' recordings (default: all in the folder).
        keep: a further filter on recordings, e.g. ``lambda r: r.index < 10`` for a small subset.
        cache_dir: feature cache folder (``False``: no cache); see :func:`~uncertlr.data.wav_features`.
        download: fetch the dataset first if the folder is missing (SHA-256 verified).
        progress: show a progress bar while reading audio.

    Raises:
        FileNotFoundError / ValueError: missing folder, empty folder, unknown speakers,
            bad WAV files (each message names the file or folder).
    """
    features = LogMel() if features is None else features
    folder = fsdd_folder(root, download=download, progress=bool(progress))
    recs = list_recordings(folder)
    if speakers is not None:
        wanted = {speakers} if isinstance(speakers, str) else set(speakers)
        present = {r.speaker for r in recs}
        if wanted - present:
            raise ValueError(
                f"speakers {sorted(wanted - present)} have no recordings in {folder}; present: {sorted(present)}"
            )
        recs = [r for r in recs if r.speaker in wanted]
    if keep is not None:
        recs = [r for r in recs if keep(r)]
        if not recs:
            raise ValueError(f"the keep filter left no recordings in {folder}")
    train, test = split_recordings(recs, split=split, test_speakers=test_speakers)
    x = wav_features([r.path for r in train + test], features, cache_dir=cache_dir, progress=progress)
    n = len(train)

    def y(rs: list[Recording]) -> np.ndarray:
        return np.array([r.digit for r in rs], dtype=np.int64)

    def spk(rs: list[Recording]) -> np.ndarray:
        return np.array([r.speaker for r in rs], dtype=str)

    return SpeechSplit(x[:n], y(train), x[n:], y(test), 10, spk(train), spk(test), train, test)


def read_recordings(recordings: Sequence[Recording]) -> list[np.ndarray]:
    """The waveforms (float32 ``[T]``) of recordings, for corrupting them before feature extraction."""
    return [read_wav(r.path)[0] for r in recordings]

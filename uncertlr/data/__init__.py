"""Data sets and audio features: sklearn digits, FSDD spoken digits, MNIST-format IDX files.

* :func:`data_dir` — where the data sets live (``--data-dir``, ``$UNCERTLR_DATA``,
  ``../shared/data`` beside a checkout, else a cache folder).
* :func:`load_digits` / :func:`shuffle_pixels` — sklearn's 8x8 digits and an OOD transform.
* :func:`load_fsdd` — the Free Spoken Digit Dataset as log-mel or MFCC features (official
  or speaker-held-out split), with :func:`list_recordings`, :func:`split_recordings`.
* :class:`LogMel`, :class:`MFCC`, :func:`log_mel_spectrogram`, :func:`mfcc`,
  :func:`read_wav` / :func:`write_wav`, :func:`add_noise`, :func:`wav_features` (cached on disk).
* :func:`load_mnist` (MNIST, Fashion-MNIST), :func:`read_idx`, :func:`write_idx`.
* :func:`load_diabetes` — sklearn's diabetes regression data, standardised.
* ``download=True`` on the FSDD and MNIST loaders fetches from the public sources and
  verifies published checksums (:mod:`uncertlr.data.fetch`).

Example:
    >>> from uncertlr.data import load_digits
    >>> split = load_digits(seed=0)
    >>> split.x_train.shape[1:], split.num_classes
    ((64,), 10)
"""

from uncertlr.data.audio import (
    MFCC,
    LogMel,
    add_noise,
    fix_length,
    log_mel_spectrogram,
    mel_filterbank,
    mfcc,
    read_wav,
    wav_features,
    write_wav,
)
from uncertlr.data.digits import Split, load_digits, shuffle_pixels
from uncertlr.data.fetch import ChecksumError, download, extract_archive, file_digest, verify_checksum
from uncertlr.data.fsdd import (
    Recording,
    SpeechSplit,
    fsdd_folder,
    list_recordings,
    load_fsdd,
    parse_recording_name,
    read_recordings,
    split_recordings,
)
from uncertlr.data.idx import load_mnist, read_idx, write_idx
from uncertlr.data.paths import cache_dir, data_dir
from uncertlr.data.tabular import RegressionSplit, load_diabetes

__all__ = [
    "MFCC",
    "ChecksumError",
    "LogMel",
    "Recording",
    "RegressionSplit",
    "SpeechSplit",
    "Split",
    "add_noise",
    "cache_dir",
    "data_dir",
    "download",
    "extract_archive",
    "file_digest",
    "fix_length",
    "fsdd_folder",
    "list_recordings",
    "load_diabetes",
    "load_digits",
    "load_fsdd",
    "load_mnist",
    "log_mel_spectrogram",
    "mel_filterbank",
    "mfcc",
    "parse_recording_name",
    "read_idx",
    "read_recordings",
    "read_wav",
    "write_wav",
    "shuffle_pixels",
    "split_recordings",
    "verify_checksum",
    "wav_features",
    "write_idx",
]

"""Audio: WAV reading, log-mel spectrograms and MFCCs (torch only), noise at a given SNR, a feature cache.

Features are computed with ``torch.stft`` (periodic Hann window, centred frames,
reflect padding), an HTK-scale triangular mel filterbank and an orthonormal DCT-II,
the conventions of ``torchaudio.transforms.MelSpectrogram`` / ``MFCC`` with their
defaults. Every waveform is first padded (zeros, both sides) or cropped (the middle)
to ``(num_frames - 1) * hop_length`` samples, so every recording gives exactly
``num_frames`` frames.

:func:`wav_features` computes the features of a list of WAV files and caches them on
disk under a key made of the feature parameters and the files' names, sizes and
modification times: change either and the features are recomputed.

Example:
    >>> import numpy as np
    >>> from uncertlr.data import LogMel
    >>> feat = LogMel(n_mels=40, num_frames=64)
    >>> wave = np.sin(2 * np.pi * 440 * np.arange(4000) / 8000).astype(np.float32)
    >>> tuple(feat([wave]).shape), feat.shape
    ((1, 40, 64), (40, 64))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import wave as _wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from uncertlr._io import atomic_write
from uncertlr._progress import progress_task
from uncertlr.data.paths import cache_dir as _cache_dir

__all__ = [
    "MFCC",
    "LogMel",
    "add_noise",
    "fix_length",
    "log_mel_spectrogram",
    "mel_filterbank",
    "mfcc",
    "read_wav",
    "wav_features",
    "write_wav",
]

_FEATURE_VERSION = 1  # bump when the feature computation changes (invalidates caches)


# --------------------------------------------------------------------------- reading


def read_wav(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read a PCM WAV file as ``(float32 samples [T] in [-1, 1], sample rate)``.

    Multi-channel files are mixed down to mono (channel mean). Reads with
    ``soundfile`` and checks the file against its own header first.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a WAV file, truncated (the header promises more audio than the
            file holds), or empty; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such WAV file: {path}")
    _check_wav_header(path)
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises its own LibsndfileError/RuntimeError
        raise ValueError(f"{path}: cannot decode WAV audio ({exc})") from exc
    if data.shape[0] == 0:
        raise ValueError(f"{path}: the WAV file holds no audio samples")
    samples = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)
    return np.ascontiguousarray(samples, dtype=np.float32), int(rate)


def _check_wav_header(path: Path) -> None:
    """Raise ValueError naming ``path`` when it is not RIFF/WAVE or its data chunk is cut short."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            raise ValueError(f"{path} is not a WAV file (no RIFF/WAVE header; {size} bytes)")
        little = head[:4] == b"RIFF"
        pos = 12
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                raise ValueError(f"{path} is truncated: no 'data' chunk found in {size} bytes")
            cid, clen = chunk[:4], int.from_bytes(chunk[4:], "little" if little else "big")
            if cid == b"data":
                have = size - pos - 8
                if clen > have and clen != 0xFFFFFFFF:  # 0xFFFFFFFF: streaming writers leave the size unset
                    raise ValueError(
                        f"{path} is truncated: its header declares {clen} bytes of audio but only {have} follow"
                    )
                return
            pos += 8 + clen + (clen & 1)
            if pos > size:
                raise ValueError(f"{path} is truncated inside its {cid.decode('latin-1')!r} chunk")
            f.seek(pos)


def write_wav(path: str | os.PathLike[str], samples: Any, sample_rate: int) -> Path:
    """Write ``samples[T]`` in ``[-1, 1]`` as a 16-bit PCM mono WAV, atomically; returns the path.

    The inverse of :func:`read_wav` up to 16-bit quantisation (values outside ``[-1, 1]`` clip).

    Example:
        >>> import tempfile, pathlib
        >>> path = write_wav(pathlib.Path(tempfile.mkdtemp()) / "a.wav", [0.0, 0.5, -0.5], 8000)
        >>> read_wav(path)[1], [round(float(v), 3) for v in read_wav(path)[0]]
        (8000, [0.0, 0.5, -0.5])
    """
    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32767), -32768, 32767).astype("<i2")

    def write(f: Any) -> None:
        with _wave.open(f, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(pcm.tobytes())

    return atomic_write(path, write)


# --------------------------------------------------------------------------- waveform helpers


def fix_length(waveform: np.ndarray, length: int) -> np.ndarray:
    """Pad with zeros on both sides (centred) or crop the middle, to exactly ``length`` samples.

    Example:
        >>> import numpy as np
        >>> from uncertlr.data import fix_length
        >>> fix_length(np.ones(3, dtype=np.float32), 7).tolist()
        [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    """
    w = np.asarray(waveform)
    if w.ndim != 1:
        raise ValueError(f"waveform must be 1-d [T]; got shape {w.shape}")
    if length < 1:
        raise ValueError(f"length must be >= 1; got {length}")
    n = len(w)
    if n >= length:
        start = (n - length) // 2
        return w[start : start + length]
    left = (length - n) // 2
    return np.pad(w, (left, length - n - left))


def add_noise(
    waveform: np.ndarray,
    snr_db: float,
    *,
    rng: np.random.Generator,
    signal_power: float | None = None,
) -> np.ndarray:
    """Add white Gaussian noise at a signal-to-noise ratio of ``snr_db`` decibels.

    Args:
        waveform: samples ``[T]``.
        snr_db: ``10 log10(signal power / noise power)``; ``inf`` returns a copy unchanged.
        rng: numpy random generator (reproducible noise).
        signal_power: mean squared amplitude of the signal; default: that of ``waveform``
            (pass the unpadded recording's power when ``waveform`` is zero-padded).

    Example:
        >>> import numpy as np
        >>> from uncertlr.data import add_noise
        >>> x = np.sin(np.arange(100_000) * 0.1)
        >>> noisy = add_noise(x, 10.0, rng=np.random.default_rng(0))
        >>> round(float(10 * np.log10(np.mean(x**2) / np.mean((noisy - x) ** 2))), 1)
        10.0
    """
    w = np.asarray(waveform)
    if math.isinf(snr_db) and snr_db > 0:
        return w.copy()
    if not math.isfinite(snr_db):
        raise ValueError(f"snr_db must be finite or +inf; got {snr_db}")
    power = float(np.mean(np.square(w, dtype=np.float64))) if signal_power is None else float(signal_power)
    noise_std = math.sqrt(power / 10 ** (snr_db / 10))
    return (w + rng.normal(0.0, noise_std, size=w.shape)).astype(w.dtype, copy=False)


# --------------------------------------------------------------------------- spectral features


def _hz_to_mel(f: Tensor | float) -> Any:
    return 2595.0 * (torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0))


def _mel_to_hz(m: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(
    *, n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> Tensor:
    """Triangular mel filters (HTK mel scale, peak 1, no area normalisation): ``[n_freqs, n_mels]``.

    ``n_freqs = n_fft // 2 + 1`` frequency bins from 0 to ``sample_rate / 2``.

    Example:
        >>> from uncertlr.data import mel_filterbank
        >>> tuple(mel_filterbank(n_freqs=129, n_mels=40, sample_rate=8000).shape)
        (129, 40)
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2; got f_min={f_min}, f_max={f_max}")
    if n_mels < 1 or n_freqs < 2:
        raise ValueError(f"need n_mels >= 1 and n_freqs >= 2; got {n_mels}, {n_freqs}")
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    pts = _mel_to_hz(
        torch.linspace(float(_hz_to_mel(f_min)), float(_hz_to_mel(f_max)), n_mels + 2, dtype=torch.float64)
    )
    lower, center, upper = pts[:-2], pts[1:-1], pts[2:]
    up = (freqs[:, None] - lower) / (center - lower)
    down = (upper - freqs[:, None]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0.0).to(torch.float32)


def _check_waveform(waveform: Any) -> Tensor:
    w = torch.as_tensor(waveform)
    if not w.dtype.is_floating_point:
        raise TypeError(f"waveform must be floating point samples in [-1, 1]; got dtype {w.dtype}")
    if w.dim() < 1 or w.shape[-1] < 2:
        raise ValueError(f"waveform must be [..., T] with T >= 2 samples; got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("waveform contains NaN or inf")
    return w.to(torch.float32)


def log_mel_spectrogram(
    waveform: Any,
    *,
    sample_rate: int = 8000,
    n_fft: int = 256,
    hop_length: int = 128,
    win_length: int | None = None,
    n_mels: int = 40,
    f_min: float = 0.0,
    f_max: float | None = None,
    log_floor: float = 1e-6,
    top_db: float | None = None,
) -> Tensor:
    """Natural-log mel power spectrogram ``log(max(mel power, log_floor))``.

    Args:
        waveform: samples ``[..., T]`` (numpy or torch, floating point).
        sample_rate, n_fft, hop_length, win_length, n_mels, f_min, f_max: STFT and mel
            parameters (``win_length`` defaults to ``n_fft``; periodic Hann window).
        log_floor: power floor before the log (silence maps to ``log(log_floor)``).
        top_db: when given, every spectrogram is also floored at ``top_db`` decibels below its
            own maximum (as ``librosa.power_to_db(top_db=...)``): quiet parts and padding then
            look alike whatever faint noise they hold.

    Returns:
        ``[..., n_mels, 1 + T // hop_length]`` float32.
    """
    w = _check_waveform(waveform)
    batch = w.shape[:-1]
    w = w.reshape(-1, w.shape[-1])
    win = n_fft if win_length is None else win_length
    spec = torch.stft(
        w,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win,
        window=torch.hann_window(win, periodic=True),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    power = spec.real.square() + spec.imag.square()  # [B, n_freqs, frames]
    fb = mel_filterbank(
        n_freqs=n_fft // 2 + 1, n_mels=n_mels, sample_rate=sample_rate, f_min=f_min, f_max=f_max
    )
    mel = torch.einsum("bft,fm->bmt", power, fb)
    out = torch.log(torch.clamp(mel, min=log_floor))
    if top_db is not None:
        if not (math.isfinite(top_db) and top_db > 0):
            raise ValueError(f"top_db must be positive and finite; got {top_db!r}")
        peak = out.amax(dim=(-2, -1), keepdim=True)
        out = torch.maximum(out, peak - top_db * math.log(10.0) / 10.0)
    return out.reshape(*batch, n_mels, out.shape[-1])


def _dct_matrix(n_mfcc: int, n_mels: int) -> Tensor:
    """Orthonormal DCT-II as a matrix ``[n_mels, n_mfcc]`` (``coeffs = x @ D``)."""
    n = torch.arange(n_mels, dtype=torch.float64)
    k = torch.arange(n_mfcc, dtype=torch.float64)
    d = torch.cos(math.pi / n_mels * (n[:, None] + 0.5) * k[None, :]) * math.sqrt(2.0 / n_mels)
    d[:, 0] /= math.sqrt(2.0)
    return d.to(torch.float32)


def mfcc(waveform: Any, *, n_mfcc: int = 20, n_mels: int = 40, **kwargs: Any) -> Tensor:
    """Mel-frequency cepstral coefficients: the orthonormal DCT-II of :func:`log_mel_spectrogram`.

    Args:
        waveform: samples ``[..., T]``.
        n_mfcc: coefficients kept (``<= n_mels``).
        n_mels, **kwargs: passed to :func:`log_mel_spectrogram`.

    Returns:
        ``[..., n_mfcc, frames]`` float32.
    """
    if not 1 <= n_mfcc <= n_mels:
        raise ValueError(f"need 1 <= n_mfcc <= n_mels; got n_mfcc={n_mfcc}, n_mels={n_mels}")
    lm = log_mel_spectrogram(waveform, n_mels=n_mels, **kwargs)
    return torch.einsum("...mt,mk->...kt", lm, _dct_matrix(n_mfcc, n_mels))


# --------------------------------------------------------------------------- feature configurations


@dataclass(frozen=True)
class LogMel:
    """Log-mel spectrogram features with a fixed number of frames: ``[N, n_mels, num_frames]``.

    Defaults suit 8 kHz speech: 32 ms windows, 16 ms hop, 40 mel bands, 64 frames
    (1.01 s; longer recordings are cropped to their middle, shorter ones zero-padded).
    """

    sample_rate: int = 8000
    n_fft: int = 256
    hop_length: int = 128
    n_mels: int = 40
    f_min: float = 0.0
    f_max: float | None = None
    num_frames: int = 64
    log_floor: float = 1e-6
    top_db: float | None = None

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "num_frames"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive integer; got {v!r}")
        if not (math.isfinite(self.log_floor) and self.log_floor > 0):
            raise ValueError(f"log_floor must be positive and finite; got {self.log_floor!r}")
        if self.top_db is not None and not (math.isfinite(self.top_db) and self.top_db > 0):
            raise ValueError(f"top_db must be positive and finite or None; got {self.top_db!r}")

    @property
    def num_samples(self) -> int:
        """Waveform length that gives exactly ``num_frames`` frames."""
        return (self.num_frames - 1) * self.hop_length

    @property
    def shape(self) -> tuple[int, int]:
        """Per-recording feature shape ``(bands or coefficients, frames)``."""
        return (self.n_mels, self.num_frames)

    def _spectral_kwargs(self) -> dict[str, Any]:
        return dict(
            sample_rate=self.sample_rate,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
            f_min=self.f_min,
            f_max=self.f_max,
            log_floor=self.log_floor,
            top_db=self.top_db,
        )

    def _transform(self, w: Tensor) -> Tensor:
        return log_mel_spectrogram(w, **self._spectral_kwargs())

    def __call__(self, waveforms: Sequence[np.ndarray] | np.ndarray | Tensor) -> Tensor:
        """Features of waveforms (a list of 1-d arrays of any lengths, or ``[N, T]``): ``[N, *shape]``."""
        if isinstance(waveforms, (np.ndarray, Tensor)) and waveforms.ndim == 1:
            raise ValueError(
                "pass a batch of waveforms ([N, T] or a list of 1-d arrays), not one 1-d waveform"
            )
        batch = (
            np.stack([fix_length(np.asarray(w, dtype=np.float32), self.num_samples) for w in waveforms])
            if len(waveforms)
            else np.zeros((0, self.num_samples), np.float32)
        )
        if len(batch) == 0:
            return torch.zeros((0, *self.shape))
        out = self._transform(torch.from_numpy(batch))
        assert out.shape[1:] == self.shape, (out.shape, self.shape)
        return out

    def cache_key(self) -> str:
        """A digest of the feature type, its parameters and the implementation version."""
        doc = {"type": type(self).__name__, "version": _FEATURE_VERSION, **dataclasses.asdict(self)}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class MFCC(LogMel):
    """MFCC features with a fixed number of frames: ``[N, n_mfcc, num_frames]``."""

    n_mfcc: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.n_mfcc <= self.n_mels:
            raise ValueError(f"need 1 <= n_mfcc <= n_mels; got n_mfcc={self.n_mfcc}, n_mels={self.n_mels}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_mfcc, self.num_frames)

    def _transform(self, w: Tensor) -> Tensor:
        return mfcc(w, n_mfcc=self.n_mfcc, **self._spectral_kwargs())


# --------------------------------------------------------------------------- cached features of WAV files


def _fingerprint(paths: Sequence[Path]) -> list[list[Any]]:
    out = []
    for p in paths:
        st = p.stat()
        out.append([p.name, st.st_size, st.st_mtime_ns])
    return out


def wav_features(
    paths: Sequence[str | os.PathLike[str]],
    features: LogMel,
    *,
    cache_dir: str | os.PathLike[str] | None | bool = None,
    progress: Any = False,
) -> np.ndarray:
    """Features ``[N, *features.shape]`` (float32) of WAV files, cached on disk.

    Args:
        paths: the WAV files (all at ``features.sample_rate``).
        features: a :class:`LogMel` or :class:`MFCC` configuration.
        cache_dir: folder for the cache (default ``<cache dir>/features``, see
            :func:`~uncertlr.data.paths.cache_dir`); ``False`` disables caching. The cache
            file's name is a digest of the feature parameters and of every file's name,
            size and modification time.
        progress: ``True`` for a progress bar, or a ``rich.progress.Progress`` to add a task to.

    Raises:
        ValueError: a file is not a valid WAV, or its sample rate differs from
            ``features.sample_rate`` (the message names the file).
    """
    files = [Path(p) for p in paths]
    cache_file: Path | None = None
    if cache_dir is not False:
        folder = Path(_cache_dir() / "features" if cache_dir in (None, True) else cache_dir)  # type: ignore[arg-type]
        doc = {"features": features.cache_key(), "files": _fingerprint(files)}
        key = hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:24]
        cache_file = folder / f"{type(features).__name__.lower()}-{len(files)}-{key}.npy"
        if cache_file.is_file():
            try:
                cached = np.load(cache_file)
                if cached.shape == (len(files), *features.shape):
                    return cached
            except (OSError, ValueError):
                pass  # unreadable cache: recompute and replace it
    waves = []
    with progress_task(progress, "reading audio", len(files), transient=True) as advance:
        for f in files:
            w, rate = read_wav(f)
            if rate != features.sample_rate:
                raise ValueError(
                    f"{f}: sample rate {rate} Hz, but the features expect {features.sample_rate} Hz"
                )
            waves.append(w)
            advance()
    # C order, as np.load returns the cache: a computed and a cached array then agree in layout as well as in
    # value (numpy's reductions sum in layout order, so a model standardised on one or the other trained
    # differently from the same seed on a first run and on every later one)
    out = (
        np.ascontiguousarray(features(waves).numpy(), dtype=np.float32)
        if waves
        else np.zeros((0, *features.shape), np.float32)
    )
    if cache_file is not None:
        atomic_write(cache_file, lambda fh: np.save(fh, out))
    return out

"""Audio features against independent numpy/scipy computations, and their input checks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from uncertlr.data import MFCC, LogMel, add_noise, fix_length, log_mel_spectrogram, mel_filterbank, mfcc


def _numpy_power_spectrogram(w: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Centred STFT with reflect padding and a periodic Hann window, in float64 numpy: ``[n_fft//2+1, frames]``."""
    pad = np.pad(w.astype(np.float64), n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = 1 + (len(pad) - n_fft) // hop
    cols = [np.fft.rfft(pad[i * hop : i * hop + n_fft] * window) for i in range(frames)]
    return np.abs(np.stack(cols, axis=1)) ** 2


def _numpy_mel(n_freqs: int, n_mels: int, sr: int) -> np.ndarray:
    def hz2mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel2hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0, sr / 2, n_freqs)
    pts = mel2hz(np.linspace(hz2mel(0.0), hz2mel(sr / 2), n_mels + 2))
    fb = np.zeros((n_freqs, n_mels))
    for m in range(n_mels):
        lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
        for i, f in enumerate(freqs):
            if lo <= f <= c:
                fb[i, m] = (f - lo) / (c - lo)
            elif c < f <= hi:
                fb[i, m] = (hi - f) / (hi - c)
    return fb


def test_log_mel_matches_an_independent_numpy_computation():
    rng = np.random.default_rng(0)
    w = (0.3 * rng.standard_normal(3000) + np.sin(np.arange(3000) * 0.3)).astype(np.float32)
    got = log_mel_spectrogram(w, n_fft=256, hop_length=128, n_mels=24, sample_rate=8000).numpy()
    power = _numpy_power_spectrogram(w, 256, 128)
    want = np.log(np.maximum(_numpy_mel(129, 24, 8000).T @ power, 1e-6))
    assert got.shape == want.shape == (24, 1 + 3000 // 128)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_mfcc_is_the_orthonormal_dct_of_log_mel():
    w = np.random.default_rng(1).standard_normal((2, 2000)).astype(np.float32)
    lm = log_mel_spectrogram(w, n_mels=32).numpy()
    want = scipy.fft.dct(lm.astype(np.float64), type=2, norm="ortho", axis=-2)[:, :13]
    np.testing.assert_allclose(mfcc(w, n_mels=32, n_mfcc=13).numpy(), want, rtol=1e-4, atol=1e-3)


def test_a_pure_tone_peaks_in_the_band_holding_its_frequency():
    fb = mel_filterbank(n_freqs=129, n_mels=40, sample_rate=8000).numpy()
    assert fb.max() <= 1.0 + 1e-6 and (fb >= 0).all() and (fb.sum(0) > 0).all()
    t = np.arange(8000) / 8000
    for f0 in (300.0, 1000.0, 3000.0):
        lm = LogMel(n_mels=40)([np.sin(2 * np.pi * f0 * t).astype(np.float32)])[0].numpy()
        band = int(lm.mean(1).argmax())
        bin_ = int(round(f0 / 4000 * 128))
        assert fb[bin_, band] > 0.3, (f0, band)


@given(n=st.integers(1, 400), length=st.integers(1, 400))
def test_fix_length_pads_or_crops_around_the_centre(n, length):
    w = np.arange(1, n + 1, dtype=np.float32)
    out = fix_length(w, length)
    assert out.shape == (length,)
    if n >= length:
        start = (n - length) // 2
        np.testing.assert_array_equal(out, w[start : start + length])
    else:
        nz = np.flatnonzero(out)
        np.testing.assert_array_equal(out[nz], w)
        left = nz[0]
        assert left == (length - n) // 2 and abs(left - (length - n - left)) <= 1


@given(snr=st.floats(-5, 30), seed=st.integers(0, 2**16))
def test_add_noise_hits_the_requested_snr(snr, seed):
    x = np.sin(np.arange(50_000) * 0.05).astype(np.float64)
    noisy = add_noise(x, snr, rng=np.random.default_rng(seed))
    measured = 10 * np.log10(np.mean(x**2) / np.mean((noisy - x) ** 2))
    assert abs(measured - snr) < 0.1
    np.testing.assert_array_equal(add_noise(x, float("inf"), rng=np.random.default_rng(0)), x)


@settings(max_examples=15)
@given(lengths=st.lists(st.integers(2, 12000), min_size=1, max_size=4))
def test_every_recording_gives_exactly_num_frames(lengths):
    rng = np.random.default_rng(0)
    feat = MFCC(n_mels=20, n_mfcc=10, num_frames=30)
    out = feat([rng.standard_normal(n).astype(np.float32) for n in lengths])
    assert tuple(out.shape) == (len(lengths), 10, 30) and torch.isfinite(out).all()


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="NaN or inf"):
        log_mel_spectrogram(np.array([0.0, np.nan, 1.0], dtype=np.float32))
    with pytest.raises(TypeError, match="floating point"):
        log_mel_spectrogram(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="num_frames must be a positive integer"):
        LogMel(num_frames=0)
    with pytest.raises(ValueError, match="n_mfcc <= n_mels"):
        MFCC(n_mels=10, n_mfcc=20)
    with pytest.raises(ValueError, match="not one 1-d waveform"):
        LogMel()(np.zeros(100, dtype=np.float32))
    with pytest.raises(ValueError, match="snr_db must be finite"):
        add_noise(np.ones(4), float("nan"), rng=np.random.default_rng(0))
    assert LogMel().cache_key() != LogMel(n_mels=41).cache_key() != MFCC().cache_key()


def test_top_db_floors_each_spectrogram_below_its_own_peak():
    rng = np.random.default_rng(2)
    w = np.stack([rng.standard_normal(4000), 0.01 * rng.standard_normal(4000)]).astype(np.float32)
    w[:, :2000] = 0.0  # silence
    plain = log_mel_spectrogram(w).numpy()
    floored = log_mel_spectrogram(w, top_db=40.0).numpy()
    r = 4 * np.log(10)
    for k in range(2):
        np.testing.assert_allclose(floored[k], np.maximum(plain[k], plain[k].max() - r), rtol=1e-6)
        assert floored[k].min() == pytest.approx(plain[k].max() - r, rel=1e-5)
    assert LogMel(top_db=40.0).cache_key() != LogMel().cache_key()
    with pytest.raises(ValueError, match="top_db must be positive"):
        LogMel(top_db=-1.0)

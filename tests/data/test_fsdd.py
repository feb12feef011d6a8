"""FSDD on the real shared copy: names, splits, features, the feature cache and bad files."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest

from uncertlr.data import (
    MFCC,
    LogMel,
    list_recordings,
    load_fsdd,
    parse_recording_name,
    read_wav,
    split_recordings,
)
from uncertlr.data import audio as audio_mod


def _subset(r):
    # a small, balanced subset: 2 test (index 0-1) + 2 train (index 5-6) recordings per digit and speaker
    return r.index in (0, 1, 5, 6)


def test_labels_and_speakers_are_parsed_from_the_file_names(fsdd_dir):
    recs = list_recordings(fsdd_dir)
    assert len(recs) == len(list(fsdd_dir.glob("*.wav")))
    for r in recs[:: max(1, len(recs) // 50)]:
        digit, speaker, index = r.path.stem.split("_")
        assert (r.digit, r.speaker, r.index) == (int(digit), speaker, int(index))
        assert 0 <= r.digit <= 9
    speakers = Counter(r.speaker for r in recs)
    assert len(speakers) >= 2
    # 50 recordings of each digit per speaker in this dataset
    per = Counter((r.speaker, r.digit) for r in recs)
    assert set(per.values()) == {50}
    assert recs == sorted(recs, key=lambda r: (r.speaker, r.digit, r.index))


def test_parse_rejects_foreign_names():
    assert parse_recording_name("0_theo_49.wav") == (0, "theo", 49)
    for bad in ("10_theo_1.wav", "x_theo_1.wav", "3_theo.wav", "3_theo_1.mp3"):
        with pytest.raises(ValueError, match="not an FSDD recording name"):
            parse_recording_name(bad)


def test_official_split_is_ten_percent_test_with_every_speaker_on_both_sides(fsdd_dir):
    recs = list_recordings(fsdd_dir)
    train, test = split_recordings(recs)
    assert len(test) * 10 == len(recs) and len(train) + len(test) == len(recs)
    assert {r.index for r in test} == set(range(5)) and min(r.index for r in train) == 5
    assert not {r.path for r in train} & {r.path for r in test}
    assert {r.speaker for r in test} == {r.speaker for r in train}
    assert Counter(r.digit for r in test) == Counter({d: len(test) // 10 for d in range(10)})


def test_speaker_split_holds_out_every_recording_of_the_speaker(fsdd_dir):
    recs = list_recordings(fsdd_dir)
    held = sorted({r.speaker for r in recs})[0]
    train, test = split_recordings(recs, split="speaker", test_speakers=[held])
    assert {r.speaker for r in test} == {held} and held not in {r.speaker for r in train}
    assert len(test) == sum(r.speaker == held for r in recs) and len(train) + len(test) == len(recs)
    with pytest.raises(ValueError, match="no recordings here"):
        split_recordings(recs, split="speaker", test_speakers=["nobody"])
    with pytest.raises(ValueError, match="needs test_speakers"):
        split_recordings(recs, split="speaker")
    with pytest.raises(ValueError, match="leaves no training data"):
        split_recordings(recs, split="speaker", test_speakers={r.speaker for r in recs})


def test_features_have_the_documented_shape_and_the_cache_is_reused(fsdd_dir, tmp_path, monkeypatch):
    before = sorted(p.name for p in fsdd_dir.iterdir())
    feat = LogMel(n_mels=32, num_frames=48)
    cache = tmp_path / "cache"
    s = load_fsdd(fsdd_dir, features=feat, keep=_subset, cache_dir=cache)
    n_spk = len({r.speaker for r in list_recordings(fsdd_dir)})
    assert s.x_train.shape == (20 * n_spk, 32, 48) and s.x_test.shape == (20 * n_spk, 32, 48)
    assert s.x_train.dtype == np.float32 and np.isfinite(s.x_train).all() and np.isfinite(s.x_test).all()
    assert s.y_train.tolist() == [r.digit for r in s.train] and s.speakers_test.tolist() == [
        r.speaker for r in s.test
    ]
    assert s.num_classes == 10 and s.x_train.std() > 0.5  # real spectra, not padding
    # the same features computed directly from the audio
    direct = feat([read_wav(r.path)[0] for r in s.test[:3]]).numpy()
    np.testing.assert_allclose(s.x_test[:3], direct, rtol=1e-5, atol=1e-5)
    files = list(cache.glob("*.npy"))
    assert len(files) == 1

    # second call: served from the cache, without reading a single WAV file
    def no_reading(path):
        raise AssertionError(f"cache not used: read {path}")

    monkeypatch.setattr(audio_mod, "read_wav", no_reading)
    again = load_fsdd(fsdd_dir, features=feat, keep=_subset, cache_dir=cache)
    np.testing.assert_array_equal(again.x_train, s.x_train)
    monkeypatch.undo()
    # computed and cached features agree in layout too, so what is computed from them agrees bit for bit
    # (a strided first result made numpy's means differ in the last bits from the cached second one's)
    assert s.x_train.flags.c_contiguous and again.x_train.flags.c_contiguous
    assert s.x_train.mean(axis=(0, 2)).tobytes() == again.x_train.mean(axis=(0, 2)).tobytes()
    # other parameters: another cache entry
    m = load_fsdd(fsdd_dir, features=MFCC(n_mels=32, n_mfcc=13, num_frames=48), keep=_subset, cache_dir=cache)
    assert m.x_train.shape[1:] == (13, 48) and np.isfinite(m.x_train).all()
    assert len(list(cache.glob("*.npy"))) == 2
    # nothing was written into the data folder
    assert sorted(p.name for p in fsdd_dir.iterdir()) == before


def test_speakers_filter_and_speaker_split_load(fsdd_dir, tmp_path):
    speakers = sorted({r.speaker for r in list_recordings(fsdd_dir)})[:2]
    s = load_fsdd(
        fsdd_dir,
        speakers=speakers,
        split="speaker",
        test_speakers=speakers[1:],
        keep=lambda r: r.index < 2,
        cache_dir=False,
    )
    assert set(s.speakers_train) == {speakers[0]} and set(s.speakers_test) == {speakers[1]}
    assert len(s.x_train) == len(s.x_test) == 20
    with pytest.raises(ValueError, match="have no recordings"):
        load_fsdd(fsdd_dir, speakers=["nobody"], cache_dir=False)


def test_truncated_wav_gives_an_error_naming_the_file(fsdd_dir, tmp_path):
    src = next(iter(sorted(fsdd_dir.glob("*.wav"))))
    folder = tmp_path / "recordings"
    folder.mkdir()
    good = shutil.copy(src, folder / "1_ann_0.wav")
    bad = folder / "2_ann_7.wav"
    data = src.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    assert read_wav(good)[1] == 8000
    with pytest.raises(ValueError, match=r"2_ann_7\.wav is truncated"):
        read_wav(bad)
    with pytest.raises(ValueError, match=r"2_ann_7\.wav is truncated"):
        load_fsdd(folder, cache_dir=False)
    bad.write_bytes(b"not a wav file at all")
    with pytest.raises(ValueError, match=r"2_ann_7\.wav is not a WAV file"):
        read_wav(bad)
    with pytest.raises(FileNotFoundError, match="no such WAV file"):
        read_wav(folder / "missing.wav")


def test_empty_or_missing_folder_gives_a_clear_error(tmp_path):
    empty = tmp_path / "recordings"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty} holds no FSDD recordings"):
        list_recordings(empty)
    with pytest.raises(FileNotFoundError, match="no FSDD recordings in"):
        load_fsdd(tmp_path / "nowhere")
    (empty / "hello.wav").write_bytes(b"RIFF")
    with pytest.raises(ValueError, match="hello.wav.*not an FSDD recording name"):
        list_recordings(empty)

"""Checksums, downloads from local file:// URLs, safe extraction and the FSDD download path (no network)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile

import pytest

from uncertlr.data import (
    ChecksumError,
    download,
    extract_archive,
    file_digest,
    fsdd_folder,
    list_recordings,
    verify_checksum,
    write_wav,
)
from uncertlr.data import fsdd as fsdd_mod


def test_digest_and_verification(tmp_path):
    p = tmp_path / "blob"
    p.write_bytes(b"x" * 3_000_000)
    assert file_digest(p) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    assert verify_checksum(p, file_digest(p).upper()) == p
    with pytest.raises(ChecksumError, match="blob: sha256 checksum mismatch"):
        verify_checksum(p, "0" * 64)
    with pytest.raises(FileNotFoundError, match="no such file"):
        verify_checksum(tmp_path / "nope", "0" * 64)


def test_download_verifies_before_the_file_appears(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload" * 1000)
    good = hashlib.md5(src.read_bytes()).hexdigest()  # noqa: S324 - the digest MNIST publishes
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(ChecksumError, match="failed verification"):
        download(src.as_uri(), dest, checksum="0" * 32, algorithm="md5", progress=False)
    assert not dest.exists() and not [p for p in dest.parent.iterdir() if p.name.startswith(".")]
    assert download(src.as_uri(), dest, checksum=good, algorithm="md5", progress=False) == dest
    assert dest.read_bytes() == src.read_bytes()
    # a verified file is kept, not fetched again (the source may be gone)
    src.unlink()
    assert download(src.as_uri(), dest, checksum=good, algorithm="md5", progress=False) == dest


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_extract_strips_filters_and_refuses_escapes(tmp_path):
    arc = tmp_path / "a.tar.gz"
    _tar(arc, {"top/recordings/1_a_0.wav": b"one", "top/README.md": b"doc", "top/recordings/x.txt": b"no"})
    got = extract_archive(
        arc,
        tmp_path / "out",
        strip_components=1,
        include=lambda p: p.startswith("recordings/") and p.endswith(".wav"),
    )
    assert got == [tmp_path / "out" / "recordings" / "1_a_0.wav"] and got[0].read_bytes() == b"one"
    evil = tmp_path / "evil.tar.gz"
    _tar(evil, {"../escape.txt": b"x"})
    with pytest.raises(ValueError, match="outside the destination"):
        extract_archive(evil, tmp_path / "out2")
    assert not (tmp_path / "escape.txt").exists()
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("d/f.txt", "zipped")
    assert [p.read_text() for p in extract_archive(z, tmp_path / "out3")] == ["zipped"]
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="junk.tar.gz is not a zip or tar archive"):
        extract_archive(tmp_path / "junk.tar.gz", tmp_path / "out4")


def test_fsdd_download_path_with_a_local_archive(tmp_path, monkeypatch):
    wavs = tmp_path / "w"
    wavs.mkdir()
    members = {}
    for d in range(3):
        write_wav(wavs / f"{d}_ann_0.wav", [0.1, -0.1] * 200, 8000)
        members[f"free-spoken-digit-dataset-1.0.9/recordings/{d}_ann_0.wav"] = (
            wavs / f"{d}_ann_0.wav"
        ).read_bytes()
    members["free-spoken-digit-dataset-1.0.9/README.md"] = b"readme"
    arc = tmp_path / "fsdd.tar.gz"
    _tar(arc, members)
    root = tmp_path / "data"
    monkeypatch.setitem(fsdd_mod.FSDD_ARCHIVE, "url", arc.as_uri())
    monkeypatch.setitem(fsdd_mod.FSDD_ARCHIVE, "sha256", "0" * 64)
    with pytest.raises(ChecksumError):
        fsdd_folder(root, download=True, progress=False)
    assert not (root / "fsdd" / "recordings").exists()
    monkeypatch.setitem(fsdd_mod.FSDD_ARCHIVE, "sha256", file_digest(arc))
    folder = fsdd_folder(root, download=True, progress=False)
    assert folder == root / "fsdd" / "recordings"
    assert [r.digit for r in list_recordings(folder)] == [0, 1, 2]
    assert not (folder.parent / "README.md").exists()

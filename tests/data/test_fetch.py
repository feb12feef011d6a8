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


# --------------------------------------------------------------------------- issue 13: budgets, names, no leftovers

import os  # noqa: E402

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from uncertlr.data.fetch import MAX_BYTES  # noqa: E402


def _tree(folder):
    """Every path under ``folder`` (hidden ones too) with its bytes (None for folders)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder)] = None
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = open(p, "rb").read()  # noqa: SIM115
    return out


def _write_archive(path, kind, members):
    if kind == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members:
                zf.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz" if kind == "tgz" else "w") as tf:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


_names = st.lists(st.sampled_from("abcxyz"), min_size=1, max_size=3).map("/".join)
_member = st.tuples(_names, st.integers(0, 3000), st.sampled_from([b"\0", b"ab", b"\x17q"]))


@pytest.mark.filterwarnings("ignore:Duplicate name")
@given(
    kind=st.sampled_from(["zip", "tar", "tgz"]),
    members=st.lists(_member, min_size=1, max_size=6),
    max_bytes=st.integers(0, 12_000),
    max_members=st.integers(1, 8),
)
def test_no_archive_writes_more_than_its_budget(tmp_path_factory, kind, members, max_bytes, max_members):
    tmp = tmp_path_factory.mktemp("arc")
    members = [(n, (b * size)[:size]) for n, size, b in members]
    arc = tmp / f"a.{kind}"
    _write_archive(arc, kind, members)
    dest = tmp / "out"
    dest.mkdir()
    (dest / "keep.txt").write_bytes(b"earlier")
    before = _tree(dest)
    names = [n for n, _ in members]
    clash = any(
        other.startswith(n + "/") for n in names for other in names
    )  # a file and a folder of one name
    final = dict(members)  # a later member of the same name wins
    fits = sum(len(d) for _, d in members) <= max_bytes and len(members) <= max_members
    try:
        written = extract_archive(arc, dest, max_bytes=max_bytes, max_members=max_members)
    except ValueError as exc:
        assert str(arc) in str(exc) and ("member" in str(exc) or "budget" in str(exc))
        assert _tree(dest) == before  # all or nothing: no partial file, no .part, no staging folder
        assert not fits or clash
        return
    assert fits and not clash
    assert sum(p.stat().st_size for p in written) <= max_bytes
    assert {str(p.relative_to(dest)): p.read_bytes() for p in written} == final
    files = {k: v for k, v in _tree(dest).items() if v is not None}
    assert files == {**{k: v for k, v in before.items() if v is not None}, **final}


def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path):
    arc = tmp_path / "bomb.zip"
    with zipfile.ZipFile(arc, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("zeros.bin", b"\0" * (64 << 20))  # 64 MiB of zeros in ~64 KiB
    assert arc.stat().st_size < 200_000
    with pytest.raises(ValueError, match=r"member 'zeros.bin' \(67,108,864 bytes\).*budget of 1,048,576"):
        extract_archive(arc, tmp_path / "out", max_bytes=1 << 20)
    assert _tree(tmp_path / "out") == {}
    assert MAX_BYTES == 1 << 30


def _sparse_tar(path, realsize):
    """A GNU sparse (PAX 1.0) member: a few bytes on disk that expand to ``realsize`` bytes."""
    sparse_map = f"1\n{realsize - 1}\n1\n".encode().ljust(512, b"\0")
    data = sparse_map + b"x"
    info = tarfile.TarInfo("GNUSparseFile.0/big.bin")
    info.size = len(data)
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": "big.bin",
        "GNU.sparse.realsize": str(realsize),
    }
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(data))


def test_a_sparse_tar_cannot_expand_past_the_budget(tmp_path):
    arc = tmp_path / "sparse.tar"
    _sparse_tar(arc, 4 << 30)  # a 10 KiB file claiming 4 GiB
    assert arc.stat().st_size < 20_000
    with pytest.raises(ValueError, match=r"member 'big.bin' \(4,294,967,296 bytes\).*budget"):
        extract_archive(arc, tmp_path / "out")
    assert _tree(tmp_path / "out") == {}
    _sparse_tar(arc, 5000)  # within the budget it extracts to its real size
    (p,) = extract_archive(arc, tmp_path / "out2")
    assert p.name == "big.bin" and p.stat().st_size == 5000 and p.read_bytes()[-1:] == b"x"


def test_too_many_members_are_refused(tmp_path):
    arc = tmp_path / "many.tar"
    _write_archive(arc, "tar", [(f"f{i}", b"") for i in range(30)])
    with pytest.raises(ValueError, match=r"member 'f20' is entry number 21, over the budget of 20 entries"):
        extract_archive(arc, tmp_path / "out", max_members=20)
    assert _tree(tmp_path / "out") == {}


@pytest.mark.parametrize(
    "name, why",
    [
        ("C:foo/x.txt", "drive letter"),
        ("C:/x.txt", "drive letter"),
        ("d/file.txt:stream", "drive letter or stream"),
        ("CON", "reserved device name"),
        ("docs/aux.txt", "reserved device name"),
        ("nul.tar.gz", "reserved device name"),
        ("a/LPT1", "reserved device name"),
        ("com\u00b9.log", "reserved device name"),
        ("trailing.", "ending in '.'"),
        ("space /x", "ending in '.' or ' '"),
        ("bell\x07.txt", "control characters"),
        ("/etc/passwd", "absolute path"),
        ("a/../../x", "'..'"),
        ("..\\evil.txt", "'..'"),
        ("\\\\server\\share\\x.txt", "absolute path"),
        ("//server/share/x.txt", "absolute path"),
    ],
)
def test_unportable_or_escaping_names_are_refused(tmp_path, name, why):
    for kind in ("zip", "tar"):
        arc = tmp_path / f"a.{kind}"
        _write_archive(arc, kind, [("ok.txt", b"fine"), (name, b"x")])
        with pytest.raises(ValueError) as err:
            extract_archive(arc, tmp_path / "out")
        assert repr(name) in str(err.value) and why in str(err.value)
        assert _tree(tmp_path / "out") == {}  # ok.txt came first, and is not left behind either


def test_a_damaged_member_is_a_value_error_naming_it_and_leaves_nothing(tmp_path):
    arc = tmp_path / "crc.zip"
    with zipfile.ZipFile(arc, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("first.txt", b"first")
        zf.writestr("second.txt", b"hello world")
    data = bytearray(arc.read_bytes())
    data[data.index(b"hello world")] ^= 0x01  # stored data no longer matches its CRC
    arc.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"member 'second.txt' cannot be read \(BadZipFile: Bad CRC-32"):
        extract_archive(arc, tmp_path / "out")
    assert _tree(tmp_path / "out") == {}  # no .part file, no first.txt
    # a truncated tar.gz
    tgz = tmp_path / "t.tar.gz"
    _write_archive(tgz, "tgz", [("a.bin", os.urandom(50_000)), ("b.bin", os.urandom(50_000))])
    tgz.write_bytes(tgz.read_bytes()[:60_000])
    with pytest.raises(
        ValueError,
        match=r"t.tar.gz: (member|the entry after member) '.*' cannot be read \((EOFError|ReadError)",
    ):
        extract_archive(tgz, tmp_path / "out")
    assert _tree(tmp_path / "out") == {}


def test_a_damaged_header_is_not_a_quiet_end_of_the_archive(tmp_path):
    arc = tmp_path / "h.tar"
    _write_archive(arc, "tar", [("a.txt", b"first"), ("b.txt", b"second"), ("c.txt", b"third")])
    data = bytearray(arc.read_bytes())
    second = data.index(b"b.txt")  # the second header starts with its name
    data[second + 148 : second + 156] = b"0000000\0"  # a wrong header checksum
    arc.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"h.tar: the entry after member 'a.txt' cannot be read"):
        extract_archive(arc, tmp_path / "out")
    assert _tree(tmp_path / "out") == {}


def test_clashes_name_the_member(tmp_path):
    arc = tmp_path / "clash.tar"
    _write_archive(arc, "tar", [("a", b"file"), ("a/b", b"under a file")])
    with pytest.raises(ValueError, match=r"member 'a' would replace a folder"):
        extract_archive(arc, tmp_path / "out")
    (tmp_path / "out2" / "x").mkdir(parents=True)
    _write_archive(arc, "tar", [("x", b"a file where a folder is")])
    with pytest.raises(ValueError, match=r"member 'x' would replace a folder"):
        extract_archive(arc, tmp_path / "out2")
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tf:
        info = tarfile.TarInfo("l")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(ValueError, match=r"member 'l': a link or device"):
        extract_archive(link, tmp_path / "out3")
    with pytest.raises(ValueError, match="max_bytes must be an integer >= 0"):
        extract_archive(link, tmp_path / "out3", max_bytes=-1)

"""Downloads with checksum verification, and safe extraction of archives.

A download streams into a temporary file beside its destination, hashing as it
goes; only a file whose digest matches the published one is renamed into place, so
an interrupted or corrupted download never leaves a file that looks complete.
Archives are extracted member by member, refusing absolute paths, ``..`` and links.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from uncertlr.data.fetch import file_digest, verify_checksum
    >>> p = Path(tempfile.mkdtemp()) / "hello.txt"
    >>> _ = p.write_bytes(b"hello")
    >>> file_digest(p, "md5")
    '5d41402abc4b2a76b9719d911017c592'
    >>> verify_checksum(p, "5d41402abc4b2a76b9719d911017c592", algorithm="md5") == p
    True
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from uncertlr._io import atomic_write
from uncertlr._progress import progress_task

__all__ = ["ChecksumError", "download", "extract_archive", "file_digest", "verify_checksum"]

_BLOCK = 1 << 20


class ChecksumError(ValueError):
    """A file's digest differs from the published one (a corrupted or tampered download)."""


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks (``algorithm``: any name ``hashlib.new`` knows)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: str | os.PathLike[str], expected: str, *, algorithm: str = "sha256") -> Path:
    """Check that ``path`` has digest ``expected``; returns the path.

    Raises:
        FileNotFoundError: the file does not exist.
        ChecksumError: the digests differ (the message names the file and both digests).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cannot verify {path}: no such file")
    got = file_digest(path, algorithm)
    if got.lower() != expected.lower():
        raise ChecksumError(f"{path}: {algorithm} checksum mismatch: expected {expected}, got {got}")
    return path


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    checksum: str,
    algorithm: str = "sha256",
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``url`` to ``dest`` and verify its digest; a verified existing file is kept as is.

    The data go to a temporary file in ``dest``'s folder and are renamed into place
    only after the digest matched, so a crash or a bad download never replaces a good
    file with a bad one. ``file://`` URLs work too (mirrors on a local disk).

    Args:
        url: where to fetch from.
        dest: the file to create.
        checksum: the published hex digest of the file.
        algorithm: the digest's algorithm (``"sha256"``, ``"md5"``...).
        progress: show a rich progress bar.
        timeout: seconds to wait for the server to answer.

    Raises:
        ChecksumError: the downloaded file's digest differs (nothing is written).
    """
    dest = Path(dest)
    if dest.is_file():
        try:
            return verify_checksum(dest, checksum, algorithm=algorithm)
        except ChecksumError:
            pass  # an earlier, corrupted download: fetch it again (replaced only once verified)

    def fetch(out: Any) -> None:
        h = hashlib.new(algorithm)
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            total = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            with progress_task(
                progress,
                f"downloading {dest.name}",
                int(total) if total else None,
                transient=True,
                transfer=True,
            ) as advance:
                for block in iter(lambda: response.read(_BLOCK), b""):
                    out.write(block)
                    h.update(block)
                    advance(len(block))
        got = h.hexdigest()
        if got.lower() != checksum.lower():  # raising here makes atomic_write drop the temporary file
            raise ChecksumError(
                f"download of {url} failed verification: {algorithm} expected {checksum}, got {got} "
                f"({dest} was not written)"
            )

    atomic_write(dest, fetch)
    return dest


def _safe_target(root: Path, name: str, archive: Path) -> Path:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and p.parts[0].endswith(":")):
        raise ValueError(f"{archive}: refusing to extract member {name!r} outside the destination folder")
    return root.joinpath(*p.parts)


def extract_archive(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    strip_components: int = 0,
    include: Callable[[str], bool] | None = None,
) -> list[Path]:
    """Extract a ``.zip``, ``.tar``, ``.tar.gz``/``.tgz`` archive into ``dest``; returns the files written.

    Args:
        archive: the archive file.
        dest: the destination folder (created if needed).
        strip_components: leading path components to drop from every member (as ``tar
            --strip-components``); members left with no path are skipped.
        include: keep only members whose (stripped, ``/``-separated) path passes this test.

    Raises:
        ValueError: the archive holds a member that would land outside ``dest`` (absolute
            path, ``..``), a link or device, or the file is not a supported archive.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def target(name: str) -> Path | None:
        parts = PurePosixPath(name.replace("\\", "/")).parts[strip_components:]
        if not parts or (include is not None and not include("/".join(parts))):
            return None
        return _safe_target(dest, "/".join(parts), archive)

    def write(path: Path, src: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        with open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, _BLOCK)
        os.replace(tmp, path)
        written.append(path)

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                path = target(info.filename)
                if path is None or info.is_dir():
                    continue
                mode = info.external_attr >> 16
                if mode and (mode & 0o170000) == 0o120000:
                    raise ValueError(f"{archive}: refusing to extract symbolic link {info.filename!r}")
                with zf.open(info) as src:
                    write(path, src)
        return written
    try:
        tf = tarfile.open(archive)  # noqa: SIM115 - closed below
    except tarfile.TarError as exc:
        raise ValueError(f"{archive} is not a zip or tar archive ({exc})") from exc
    with tf:
        for member in tf.getmembers():
            path = target(member.name)
            if path is None or member.isdir():
                continue
            if not member.isfile():
                raise ValueError(
                    f"{archive}: refusing to extract {member.name!r} (links and devices are not allowed)"
                )
            src = tf.extractfile(member)
            assert src is not None
            with src:
                write(path, src)
    return written

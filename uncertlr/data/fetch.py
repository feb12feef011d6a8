"""Downloads with checksum verification, and safe extraction of archives.

A download streams into a temporary file beside its destination, hashing as it
goes; only a file whose digest matches the published one is renamed into place, so
an interrupted or corrupted download never leaves a file that looks complete.
Archives are extracted all or nothing within a size budget (bytes written and entries
read), refusing absolute paths, ``..``, drive letters, reserved device names and links;
every failure is a ``ValueError`` naming the member.

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

import contextlib
import functools
import hashlib
import lzma
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Generator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from uncertlr._io import atomic_write
from uncertlr._progress import progress_task

__all__ = [
    "MAX_BYTES",
    "MAX_MEMBERS",
    "ChecksumError",
    "download",
    "extract_archive",
    "file_digest",
    "verify_checksum",
]

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


#: Default budget of :func:`extract_archive`: total bytes it may write, and archive entries it may read.
MAX_BYTES = 1 << 30
MAX_MEMBERS = 100_000

#: Names Windows reserves for devices (with any extension): refused as archive members on every OS.
_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{dev}{i}" for dev in ("COM", "LPT") for i in (*"123456789", "\u00b9", "\u00b2", "\u00b3")
}


def _safe_parts(parts: tuple[str, ...], name: str, archive: Path) -> tuple[str, ...]:
    """The path parts of a member, or a ValueError naming it when it could land outside ``dest``
    or is not a portable file name (drive letters, Windows device names, control characters)."""

    def refuse(why: str) -> ValueError:
        return ValueError(f"{archive}: refusing to extract member {name!r}: {why}")

    if not parts:
        return parts
    if parts[0].startswith("/"):  # "/x", and "//server/share" (a UNC path once backslashes are slashes)
        raise refuse("an absolute path would land outside the destination folder")
    for part in parts:
        if part == "..":
            raise refuse("'..' would land outside the destination folder")
        if ":" in part:
            raise refuse("a drive letter or stream name (':') would land outside the destination folder")
        if any(ord(c) < 32 or c == "\x7f" for c in part):
            raise refuse("control characters in a file name")
        if part.endswith((".", " ")):
            raise refuse("a name ending in '.' or ' ' (Windows drops them: two members could collide)")
        if part.split(".")[0].rstrip(" ").upper() in _RESERVED:
            raise refuse(f"{part!r} is a reserved device name on Windows")
    return parts


class _Budget:
    """Counts the entries read and the bytes written against the limits; ValueError naming the member."""

    def __init__(self, archive: Path, max_bytes: int, max_members: int):
        self.archive, self.max_bytes, self.max_members = archive, max_bytes, max_members
        self.bytes = 0
        self.members = 0

    def entry(self, name: str) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise ValueError(
                f"{self.archive}: member {name!r} is entry number {self.members}, over the budget of "
                f"{self.max_members} entries (pass max_members= to allow more)"
            )

    def check(self, name: str, size: int) -> None:
        if self.bytes + size > self.max_bytes:
            raise ValueError(
                f"{self.archive}: member {name!r} ({size:,} bytes) would take the extracted size past the "
                f"budget of {self.max_bytes:,} bytes (pass max_bytes= to allow more)"
            )

    def copy(self, name: str, src: IO[bytes], out: IO[bytes]) -> None:
        while block := src.read(min(_BLOCK, self.max_bytes - self.bytes + 1)):
            self.check(name, len(block))
            out.write(block)
            self.bytes += len(block)


def _members(archive: Path) -> Generator[tuple[str, str, int, Callable[[], IO[bytes]]], None, None]:
    """``(name, kind, declared size, open)`` per entry; kind is ``file``, ``dir`` or what else it is."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16
                if info.is_dir():
                    kind = "dir"
                elif mode and (mode & 0o170000) == 0o120000:
                    kind = "symbolic link"
                else:
                    kind = "file"
                yield info.filename, kind, info.file_size, functools.partial(zf.open, info)
        return
    try:
        tf = tarfile.open(archive)  # noqa: SIM115 - closed below
    except tarfile.TarError as exc:
        raise ValueError(f"{archive} is not a zip or tar archive ({exc})") from exc
    with tf:
        last = ""
        while (member := tf.next()) is not None:
            kind = "file" if member.isfile() else "dir" if member.isdir() else "link or device"
            yield member.name, kind, member.size, functools.partial(_tar_open, tf, member)
            last = member.name
        # tarfile ends quietly at a damaged header; a real end is zero blocks
        tf.fileobj.seek(tf.offset)
        if tf.fileobj.read(tarfile.RECORDSIZE).strip(b"\0"):
            where = f"the entry after member {last!r}" if last else "the first entry"
            raise ValueError(f"{archive}: {where} cannot be read (its header is damaged)")


def _tar_open(tf: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    src = tf.extractfile(member)
    assert src is not None  # a regular file
    return src


#: What a damaged archive raises while it is read (turned into a ValueError naming the member).
_READ_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    RuntimeError,
)


def extract_archive(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    strip_components: int = 0,
    include: Callable[[str], bool] | None = None,
    max_bytes: int = MAX_BYTES,
    max_members: int = MAX_MEMBERS,
) -> list[Path]:
    """Extract a ``.zip``, ``.tar``, ``.tar.gz``/``.tgz`` archive into ``dest``; returns the files written.

    All or nothing: members are extracted into a temporary folder inside ``dest`` and moved
    into place only when every one of them was read and checked; a failure leaves ``dest``
    as it was (no partial file, no ``.part`` file, no temporary folder).

    Args:
        archive: the archive file.
        dest: the destination folder (created if needed).
        strip_components: leading path components to drop from every member (as ``tar
            --strip-components``); members left with no path are skipped.
        include: keep only members whose (stripped, ``/``-separated) path passes this test.
        max_bytes: the most bytes the extracted files may hold together (default 1 GiB); the
            count is of bytes actually written, whatever the archive's headers claim.
        max_members: the most entries (files, folders, skipped ones too) the archive may hold.

    Raises:
        ValueError: naming the member: it would land outside ``dest`` (absolute path, ``..``,
            a drive letter), has a name Windows reserves or cannot hold, is a link or device,
            is damaged (bad CRC, truncated), clashes with another member or an existing
            folder, or goes over the budget; or the file is not a supported archive.

    Example:
        >>> import io, tarfile, tempfile
        >>> from pathlib import Path
        >>> d = Path(tempfile.mkdtemp())
        >>> with tarfile.open(d / "a.tar", "w") as tf:
        ...     info = tarfile.TarInfo("top/data.txt"); info.size = 5
        ...     tf.addfile(info, io.BytesIO(b"hello"))
        >>> [p.name for p in extract_archive(d / "a.tar", d / "out", strip_components=1)]
        ['data.txt']
        >>> extract_archive(d / "a.tar", d / "out2", max_bytes=4)
        Traceback (most recent call last):
        ...
        ValueError: ...member 'top/data.txt' (5 bytes) would take the extracted size past the budget of 4 bytes...
    """
    archive, dest = Path(archive), Path(dest)
    for label, value, low in (("max_bytes", max_bytes, 0), ("max_members", max_members, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{label} must be an integer >= {low}; got {value!r}")
    if not archive.is_file():
        raise FileNotFoundError(f"no archive at {archive}")
    dest.mkdir(parents=True, exist_ok=True)
    budget = _Budget(archive, max_bytes, max_members)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        staged = _stage(archive, dest, staging, budget, strip_components, include)
        return _move_into_place(archive, staged)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stage(
    archive: Path,
    dest: Path,
    staging: Path,
    budget: _Budget,
    strip_components: int,
    include: Callable[[str], bool] | None,
) -> dict[Path, tuple[Path, str]]:
    """Read every member into ``staging``; returns ``{final path: (staged file, member name)}``."""
    staged: dict[Path, tuple[Path, str]] = {}
    members = _members(archive)
    name: str | None = None  # the member being read; None between members
    last = ""
    try:
        for name, kind, size, open_member in members:
            budget.entry(name)
            parts = PurePosixPath(name.replace("\\", "/")).parts
            parts = _safe_parts(parts, name, archive)[strip_components:]
            if not parts or kind == "dir" or (include is not None and not include("/".join(parts))):
                last, name = name, None
                continue
            if kind != "file":
                raise ValueError(
                    f"{archive}: refusing to extract member {name!r}: a {kind} (only files are allowed)"
                )
            budget.check(name, size)  # what the header declares, before reading a byte
            tmp = staging / str(budget.members)  # unique: one per entry read
            with open_member() as src, open(tmp, "wb") as out:
                budget.copy(name, src, out)
            staged.pop(dest.joinpath(*parts), None)  # a later member of the same name wins, as with tar
            staged[dest.joinpath(*parts)] = (tmp, name)
            last, name = name, None
    except _READ_ERRORS as exc:
        if name is not None:
            where = f"member {name!r}"
        else:  # the entry's own header is damaged: name where it is
            where = f"the entry after member {last!r}" if last else "the first entry"
        raise ValueError(f"{archive}: {where} cannot be read ({type(exc).__name__}: {exc})") from exc
    finally:
        members.close()
    return staged


def _move_into_place(archive: Path, staged: dict[Path, tuple[Path, str]]) -> list[Path]:
    """Check every target against the others and the disk, then rename the staged files into place."""
    dirs = {p for target in staged for p in target.parents}
    for target, (_, name) in staged.items():
        if target in dirs or target.is_dir():
            raise ValueError(f"{archive}: member {name!r} would replace a folder ({target})")
        for parent in target.parents:
            if parent.exists() and not parent.is_dir():
                raise ValueError(
                    f"{archive}: member {name!r} needs {parent} to be a folder, but it is a file"
                )
    written: list[Path] = []
    made: list[Path] = []
    try:
        for target, (tmp, _) in staged.items():
            for parent in reversed(target.parents):
                if not parent.exists():
                    parent.mkdir()
                    made.append(parent)
            os.replace(tmp, target)
            written.append(target)
    except OSError as exc:  # a full disk or a permission: take back what was moved
        for p in written:
            p.unlink(missing_ok=True)
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise ValueError(f"{archive}: extraction into place failed and was undone: {exc}") from exc
    return written

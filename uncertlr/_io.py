"""Files that survive crashes: atomic writes, JSON, and the environment a result was made in.

Every file uncertlr writes goes through :func:`atomic_write` (a temporary file in the same
folder, ``fsync``, then ``os.replace``), so a crash or a second process never leaves a
half-written file in place of a good one.

Example:
    >>> import tempfile, pathlib
    >>> from uncertlr._io import read_json, write_json
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "x.json"
    >>> _ = write_json(path, {"a": 1, "b": float("nan")})
    >>> read_json(path)
    {'a': 1, 'b': None}
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import tempfile
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import platformdirs

__all__ = [
    "CACHE_ENV",
    "PACKAGES",
    "atomic_write",
    "cache_dir",
    "environment",
    "jsonable",
    "read_json",
    "write_json",
]

#: Packages whose versions :func:`environment` records (those that matter to reproduce a run).
PACKAGES = (
    "uncertlr",
    "torch",
    "pyro-ppl",
    "numpy",
    "jax",
    "numpyro",
    "optax",
    "arviz",
    "scikit-learn",
    "matplotlib",
)


#: Environment variable naming the cache folder (downloads without a data folder, feature caches, built kernels).
CACHE_ENV = "UNCERTLR_CACHE"


def cache_dir() -> Path:
    """The cache folder: ``$UNCERTLR_CACHE``, else the platform's user cache folder for ``uncertlr``.

    The folder is not created here; whoever writes to it does that.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    # platformdirs: $XDG_CACHE_HOME or ~/.cache on Linux, ~/Library/Caches on macOS, %LOCALAPPDATA% on Windows
    return platformdirs.user_cache_path("uncertlr", appauthor=False)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` by calling ``write(file)`` on a temporary file, then renaming it into place.

    If ``write`` raises, the previous content of ``path`` (if any) is left untouched. The file
    gets the usual permissions of a new file (``0o666`` minus the umask), not ``mkstemp``'s 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values: arrays and array scalars become lists and numbers, NaN/inf ``None``."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch / jax scalars
        return jsonable(obj.item())
    if hasattr(obj, "tolist"):
        return jsonable(obj.tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return repr(obj)


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Atomically write ``data`` as indented JSON (arrays become lists; NaN/inf become null)."""
    text = json.dumps(jsonable(data), indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file written by :func:`write_json`."""
    return json.loads(Path(path).read_text())


def environment(packages: Iterable[str] = PACKAGES) -> dict[str, Any]:
    """Versions of the installed packages that matter for reproducing a run, plus Python and the OS."""
    versions: dict[str, str] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), "platform": platform.platform(), "versions": versions}

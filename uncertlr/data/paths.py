"""Where data sets and cached features live.

:func:`data_dir` resolves the folder that holds the data sets, in this order:

1. an explicit ``path`` argument (a script's ``--data-dir``);
2. the ``UNCERTLR_DATA`` environment variable;
3. ``<repository root>/../shared/data`` when that folder exists (a development checkout
   next to a shared data folder, as in this project's CI);
4. ``<cache dir>/data`` — where ``download=True`` puts data sets for everybody else.

:func:`cache_dir` is ``$UNCERTLR_CACHE``, else the platform's user cache folder (``platformdirs``: ``$XDG_CACHE_HOME/uncertlr``, else
``~/.cache/uncertlr`` on Linux).

Example:
    >>> import os
    >>> from uncertlr.data import data_dir
    >>> str(data_dir("/tmp/my-data"))
    '/tmp/my-data'
"""

from __future__ import annotations

import os
from pathlib import Path

from uncertlr._io import cache_dir

__all__ = ["cache_dir", "data_dir"]

#: Environment variable naming the data folder.
DATA_ENV = "UNCERTLR_DATA"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the data sets (``fsdd/recordings``, ``mnist``, ``fashion-mnist``...).

    Args:
        path: an explicit folder; wins over everything else. ``None`` looks at
            ``$UNCERTLR_DATA``, then ``<repository root>/../shared/data`` when it exists,
            then falls back to ``<cache dir>/data`` (see :func:`cache_dir`).

    Returns:
        The folder (it may not exist yet: loaders say what is missing, and
        ``download=True`` creates it).
    """
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    shared = _REPO_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    return cache_dir() / "data"

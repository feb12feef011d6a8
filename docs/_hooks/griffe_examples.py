"""A griffe extension for the docs build: read uncertlr's ``Example:`` docstring sections as examples.

uncertlr's docstrings title their doctests ``Example:`` (the style of optax and Equinox); griffe's
Google parser knows only ``Examples:`` and would render the doctest lines as prose.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_TITLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        doc = getattr(obj, "docstring", None)
        if doc is not None and "Example:" in doc.value:
            doc.value = _TITLE.sub(r"\1Examples:", doc.value)

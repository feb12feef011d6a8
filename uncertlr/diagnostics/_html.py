"""Small, escaping HTML builders for the report (no template engine, no external resources).

Every string that reaches the page goes through :func:`esc` (model names, config values,
package versions, warnings). The page carries a Content-Security-Policy that allows only
inline styles, ``data:`` images and the one inline script below (by its hash), so even
markup that slipped past escaping could not load or run anything.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["esc", "image", "page", "table"]

# Marks every <img> with data-loaded="true|false" once the page has loaded and shows a note
# when one failed; the browser test reads these marks from the DOM dump.
_IMAGE_CHECK = (
    'window.addEventListener("load",function(){var m=document.images,ok=0;'
    "for(var i=0;i<m.length;i++){var g=m[i].complete&&m[i].naturalWidth>0;"
    'm[i].setAttribute("data-loaded",g?"true":"false");if(g)ok++;}'
    'document.body.setAttribute("data-images",ok+"/"+m.length);'
    'if(ok<m.length){var w=document.getElementById("image-check");w.hidden=false;'
    'w.textContent=(m.length-ok)+" of "+m.length+" images failed to load.";}});'
)
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_IMAGE_CHECK.encode()).digest()).decode()
CSP = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{_SCRIPT_HASH}'"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:1.5rem 2rem 3rem}
header{background:#1d2330;color:#fff;padding:1.2rem 2rem}
header h1{margin:0;font-size:1.5rem}header p{margin:.3rem 0 0;color:#c9d1e0}
nav{margin:1rem 0;font-size:.9rem}nav a{margin-right:1rem;color:#2a5db0}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:1rem 1.4rem;margin:1.2rem 0}
h2{margin-top:.2rem;font-size:1.25rem}h3{font-size:1.05rem;margin-bottom:.4rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border-bottom:1px solid #e3e6ec;padding:.25rem .6rem;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}th{background:#f0f2f6}
td.bad{color:#b3261e;font-weight:600}
img{max-width:100%;height:auto;display:block;margin:.6rem 0}
.warn{background:#fff4e5;border-left:4px solid #e08a00;padding:.6rem 1rem;margin:.6rem 0}
.ok{background:#e9f6ec;border-left:4px solid #2e8b57;padding:.6rem 1rem;margin:.6rem 0}
.note{color:#5a6272;font-size:.9rem}code{background:#f0f2f6;padding:0 .25rem;border-radius:3px}
footer{color:#5a6272;font-size:.8rem;margin-top:2rem}
"""


def esc(value: Any) -> str:
    """HTML-escape ``str(value)`` (quotes included)."""
    return html.escape(str(value), quote=True)


def table(
    headers: Sequence[Any], rows: Iterable[Sequence[Any]], *, bad: set[tuple[int, int]] | None = None
) -> str:
    """A table of escaped cells; ``bad`` holds ``(row, column)`` cells to highlight."""
    bad = bad or set()
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(
            f'<td class="bad">{esc(c)}</td>' if (i, j) in bad else f"<td>{esc(c)}</td>"
            for j, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def image(png: bytes, alt: str) -> str:
    """An ``<img>`` with the PNG embedded as a ``data:`` URI."""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def page(
    *, title: str, subtitle: str, sections: Sequence[tuple[str, str, str]], banner: str, footer: str
) -> str:
    """The whole document; ``sections`` are ``(id, title, inner HTML)`` (inner HTML already escaped)."""
    nav = "".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t, _ in sections)
    body = "".join(f'<section id="{esc(i)}"><h2>{esc(t)}</h2>{inner}</section>' for i, t, inner in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><main>"
        f'<p id="image-check" class="warn" hidden></p>{banner}<nav>{nav}</nav>{body}'
        f"<footer>{esc(footer)}</footer></main><script>{_IMAGE_CHECK}</script></body></html>\n"
    )

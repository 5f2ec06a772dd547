"""HTML building blocks of the report: escaping, tables, inline images, and the page itself.

The page is self-contained: images are ``data:`` URIs and charts inline SVG. Its Content-Security-Policy allows
nothing else, so a stray external URL fails loudly in a browser (a console error) instead of quietly working only
online; a small script reports every image that did not decode on the console and marks it on the page.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #222; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 34px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; vertical-align: top; }
th { background: #f4f6f9; } td.l, th.l { text-align: left; }
.note { color: #666; font-size: 13px; } .warn { color: #a33; font-size: 13px; }
.grid td, .grid th { text-align: center; font-size: 11px; } .grid td.l, .grid th.l { text-align: left; }
.grid img { width: 96px; height: 96px; image-rendering: pixelated; display: block; margin: 0 auto 2px; }
img.broken { outline: 3px solid red; }
.chart { margin: 8px 0; } pre { font-size: 12px; white-space: pre-wrap; margin: 0; text-align: left; }
.facts td { text-align: left; }
"""

# marks and logs every image that failed to load or decode; the report test (headless Chromium) catches the log
CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var broken = 0;
  Array.prototype.forEach.call(document.images, function (img) {
    if (!img.complete || img.naturalWidth === 0) {
      broken += 1;
      img.classList.add('broken');
      console.error('report: image did not load: ' + (img.alt || img.src.slice(0, 40)));
    }
  });
  document.body.setAttribute('data-broken-images', String(broken));
});
"""

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


def data_uri(path: Path) -> str:
    return f"data:{MIME.get(path.suffix.lower(), 'image/png')};base64,{base64.b64encode(path.read_bytes()).decode()}"


def img(path: Path, alt: str) -> str:
    if not path.is_file():
        return f'<span class="warn">missing: {escape(path.name)}</span>'
    return f'<img src="{data_uri(path)}" alt="{escape(alt, quote=True)}">'


def table(header: Sequence[str], rows: Iterable[Sequence[object]], *, left: int = 1, cls: str = "") -> str:
    """``left``: how many leading columns are text (left-aligned). Cells are escaped unless wrapped in ``Raw``."""
    def cell(tag: str, value: object, i: int) -> str:
        align = ' class="l"' if i < left else ""
        text = value.html if isinstance(value, Raw) else escape("" if value is None else str(value))
        return f"<{tag}{align}>{text}</{tag}>"

    head = "".join(cell("th", h, i) for i, h in enumerate(header)) if any(header) else ""
    body = "".join("<tr>" + "".join(cell("td", v, i) for i, v in enumerate(row)) + "</tr>" for row in rows)
    klass = f' class="{cls}"' if cls else ""
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table{klass}>{thead}<tbody>{body}</tbody></table>"


class Raw:
    """Trusted HTML for a table cell."""

    def __init__(self, html: str) -> None:
        self.html = html


def num(v: object, spec: str = ".4g") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return format(v, spec)
    return str(v)


def section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{body}</section>'


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document; ``sections`` are (anchor, title, html)."""
    nav = " · ".join(f'<a href="#{a}">{escape(t)}</a>' for a, t, _ in sections)
    body = "".join(section(t, html, a) for a, t, html in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{escape(title)}</h1><p class=\"note\">{escape(subtitle)}</p><nav>{nav}</nav>{body}"
            f"<script>{CHECK_SCRIPT}</script></body></html>\n")

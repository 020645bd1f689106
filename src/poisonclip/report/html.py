"""One self-contained HTML page: figures embedded as base64 PNG, tables, text. No scripts,
no external files or fonts, so the page can be mailed, archived or opened offline.

Generic on purpose (the sweep report and the demo build on it)::

    from poisonclip.report.html import Section, Image, Table, Text, write_html
    write_html("report.html", "My attack", [
        Section("Backdoor", [Text("Two models per point."),
                             Image("figs/asr.png", caption="ASR vs poisons"),
                             Table.from_frame(df, caption="per setting")]),
    ])

``Image`` takes a PNG path, PNG bytes or a matplotlib figure. ``Table`` takes column names and
rows (or a pandas DataFrame via ``from_frame``); cells are escaped, floats formatted with
``float_format``. ``Text`` is plain text: blank lines separate paragraphs, nothing is
interpreted as markup. ``Html`` inserts trusted markup verbatim (your own code only).
"""

from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

from poisonclip.io_utils import atomic_write_text

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1100px;
padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:.9em}
figure{display:inline-block;margin:.6em 1em .6em 0;vertical-align:top}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#444;max-width:520px}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4}td.s,th.s{text-align:left}
caption{caption-side:top;text-align:left;font-weight:600;padding:.3em 0}
.note{background:#fff8e1;border-left:3px solid #f0c040;padding:.4em .8em}
"""


@dataclass(frozen=True)
class Text:
    text: str
    note: bool = False     # highlighted box, for caveats


@dataclass(frozen=True)
class Html:
    markup: str            # inserted verbatim: only for markup your own code made


@dataclass(frozen=True)
class Image:
    source: Any            # Path/str of a PNG, PNG bytes, or a matplotlib Figure
    caption: str = ""
    alt: str = ""
    width: int | None = None   # display width in CSS pixels (default: natural size)

    def png(self) -> bytes:
        src = self.source
        if isinstance(src, (bytes, bytearray)):
            return bytes(src)
        if isinstance(src, (str, os.PathLike)):
            return Path(src).read_bytes()
        if hasattr(src, "savefig"):
            from poisonclip.report.figures import png_bytes

            return png_bytes(src)
        raise TypeError(f"Image source must be a PNG path, PNG bytes or a matplotlib figure, got {type(src)}")


@dataclass(frozen=True)
class Table:
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""
    float_format: str = "{:.3g}"

    @classmethod
    def from_frame(cls, frame: Any, caption: str = "", float_format: str = "{:.3g}",
                   index: bool = False) -> "Table":
        df = frame.reset_index() if index else frame
        rows = [list(r) for r in df.itertuples(index=False, name=None)]
        return cls([str(c) for c in df.columns], rows, caption, float_format)


Block = Union[Text, Html, Image, Table]


@dataclass(frozen=True)
class Section:
    title: str
    blocks: Sequence[Block] = field(default_factory=list)


def _cell(v: Any, float_format: str) -> tuple[str, bool]:
    """(escaped text, is_text) for one table cell."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "&ndash;", False
    if isinstance(v, bool):
        return str(v).lower(), True
    if isinstance(v, float):
        return html.escape(float_format.format(v)), False
    if isinstance(v, int):
        return str(v), False
    try:  # numpy scalars
        import numpy as np

        if isinstance(v, np.floating):
            return _cell(float(v), float_format)
        if isinstance(v, np.integer):
            return str(int(v)), False
    except ImportError:  # pragma: no cover
        pass
    return html.escape(str(v)), True


def _render_block(b: Block, index: int) -> str:
    if isinstance(b, Text):
        paras = [p.strip() for p in b.text.split("\n\n") if p.strip()]
        cls = ' class="note"' if b.note else ""
        return "".join(f"<p{cls}>{html.escape(p)}</p>" for p in paras)
    if isinstance(b, Html):
        return b.markup
    if isinstance(b, Image):
        data = base64.b64encode(b.png()).decode("ascii")
        alt = html.escape(b.alt or b.caption or f"figure {index}", quote=True)
        width = f' width="{int(b.width)}"' if b.width else ""
        cap = f"<figcaption>{html.escape(b.caption)}</figcaption>" if b.caption else ""
        return f'<figure><img alt="{alt}"{width} src="data:image/png;base64,{data}">{cap}</figure>'
    if isinstance(b, Table):
        head = "".join(f'<th class="s">{html.escape(str(c))}</th>' for c in b.columns)
        body = []
        for row in b.rows:
            cells = []
            for v in row:
                text, is_text = _cell(v, b.float_format)
                cells.append(f'<td class="s">{text}</td>' if is_text else f"<td>{text}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        cap = f"<caption>{html.escape(b.caption)}</caption>" if b.caption else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    raise TypeError(f"unknown report block {type(b).__name__}")


def render_html(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """The page as a string (``write_html`` writes it)."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{_CSS}</style>",
             # No network access from the page, even by accident.
             "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
             "img-src data:; style-src 'unsafe-inline'\">",
             f"</head><body><h1>{html.escape(title)}</h1>"]
    if subtitle:
        parts.append(f'<p class="meta">{html.escape(subtitle)}</p>')
    n = 0
    for s in sections:
        parts.append(f"<section><h2>{html.escape(s.title)}</h2>")
        for b in s.blocks:
            n += 1
            parts.append(_render_block(b, n))
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_html(path: str | os.PathLike, title: str, sections: Sequence[Section], subtitle: str = "") -> Path:
    """Write the page atomically and return its path."""
    return atomic_write_text(path, render_html(title, sections, subtitle))

"""The HTML report: one self-contained file (inline CSS, figures as base64 PNG, no links out),
so it can be mailed, archived or opened offline exactly as written."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

from kdlab.report.formats import Table, to_html_table

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 70em; padding: 0 1em; color: #222; background: #fff; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.4em; }
thead th { border-top: 2px solid #222; border-bottom: 1px solid #222; }
tbody tr:last-child td { border-bottom: 2px solid #222; }
th, td { padding: 0.25em 0.7em; text-align: left; white-space: nowrap; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #f4f6f8; }
ul.notes { color: #555; font-size: 0.9em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.9em; }
"""


def html_document(
    title: str,
    table: Table,
    figures: Sequence[tuple[str, str, bytes]],
    meta: Sequence[str] = (),
) -> str:
    """The report page; ``figures`` are (id, caption, PNG bytes), embedded as data URIs."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{CSS}</style></head>",
        "<body>",
        f"<h1>{esc(title)}</h1>",
        *(f"<p>{esc(line)}</p>" for line in meta),
        to_html_table(table),
    ]
    if table.notes:
        parts.append('<ul class="notes">')
        parts += [f"<li>{esc(note)}</li>" for note in table.notes]
        parts.append("</ul>")
    if figures:
        parts.append("<h2>Figures</h2>")
    for ident, caption, png in figures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure id="{esc(ident)}"><img alt="{esc(caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{esc(caption)}</figcaption></figure>'
        )
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"

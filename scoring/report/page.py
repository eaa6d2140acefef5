"""The report's single HTML page: a header, one section per part, every figure inline.

Nothing is fetched when the page opens (no script, stylesheet, font or image file: a
small <style> block and inline SVG), so the file can be mailed or opened offline. Every
text that came from the database is escaped here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

EMPTY = "No data in this window."

STYLE = """
body { font: 14px/1.45 system-ui, "DejaVu Sans", sans-serif; color: #222; background: #f7f7f7;
       max-width: 1000px; margin: 0 auto; padding: 1.5rem; }
header { border-bottom: 3px solid #4c72b0; margin-bottom: 1rem; }
h1 { margin: 0 0 .5rem; font-size: 1.6rem; }
h2 { margin: 0 0 .6rem; font-size: 1.15rem; }
h3 { margin: 1rem 0 .3rem; font-size: 1rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: 0 0 1rem; }
dt { font-weight: 600; color: #555; }
dd { margin: 0; }
nav { margin: .5rem 0 1rem; }
nav a { margin-right: .9rem; color: #4c72b0; }
section { background: #fff; border: 1px solid #e2e2e2; border-radius: 6px;
          padding: 1rem 1.25rem; margin: 1rem 0; }
figure { margin: 0 0 .5rem; }
figure svg { display: block; max-width: 100%; height: auto; }
figcaption { color: #555; font-size: .88rem; margin-top: .35rem; }
.empty { border: 2px dashed #c8c8c8; border-radius: 6px; background: #f4f4f4; color: #666;
         padding: 1.6rem; text-align: center; font-size: 1rem; }
table { border-collapse: collapse; width: 100%; font-size: .84rem; margin-top: .5rem; }
th, td { text-align: left; padding: .22rem .5rem; border-bottom: 1px solid #eee; }
th { background: #eef2f8; }
code { background: #f0f0f0; border-radius: 3px; padding: 0 .2em; }
"""


@dataclass(frozen=True)
class Section:
    key: str  # the section's id (the nav links to it)
    title: str
    body: str  # HTML, already escaped


def figure(key: str, svg: str | None, caption: str, empty: str = EMPTY) -> str:
    """A plot with its caption, or the empty-state panel when it has no data. `caption`
    is HTML (escape what came from the database)."""
    if svg is None:
        return f'<div class="empty" data-empty="{escape(key)}">{escape(empty)}</div>'
    return (
        f'<figure class="plot" id="fig-{escape(key)}">{svg}'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def empty_panel(key: str, message: str) -> str:
    return figure(key, None, "", message)


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape('' if v is None else str(v))}</td>" for v in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, facts: Sequence[tuple[str, str]], sections: Sequence[Section]) -> str:
    """The whole document; `facts` are the header's (label, plain text) pairs."""
    header = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts)
    nav = "".join(f'<a href="#{escape(s.key)}">{escape(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="{escape(s.key)}"><h2>{escape(s.title)}</h2>{s.body}</section>'
        for s in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{escape(title)}</h1><dl>{header}</dl><nav>{nav}</nav></header>"
        f"<main>{body}</main></body></html>\n"
    )

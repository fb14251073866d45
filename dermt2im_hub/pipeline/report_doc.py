"""A small document model for the run report, rendered to Markdown and to HTML by two separate writers.

The report shows strings the run does not control (prompts, file names, infotext, metadata, config values), so
it is never built by pasting text into markup: sections build blocks from data, and each writer escapes every
text for its own format. The HTML writer does not go through a Markdown parser at all (nothing a prompt holds can
open a tag there), and the Markdown writer backslash-escapes everything that could start a link, an image, raw
HTML, emphasis or a table cell. Link targets are relative paths inside the run folder, percent-encoded, so no
scheme (javascript:, data:) can come from data. Images are inlined into the HTML as data: URIs (the report is one
file that can be sent on its own), each linked to the full-size file beside it.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

# one image larger than this is linked rather than inlined (a report should stay small enough to e-mail)
MAX_INLINE_IMAGE_BYTES = 8 * 1024 * 1024
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


@dataclass
class Code:
    text: str


@dataclass
class Strong:
    text: str


@dataclass
class Link:
    text: str
    target: str  # a path relative to the report's folder


Inline = str | Code | Strong | Link
Inlines = Inline | list[Inline]


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    content: Inlines
    css: str | None = None


@dataclass
class Table:
    header: list[Inlines]
    rows: list[list[Inlines]]


@dataclass
class Figure:
    path: Path  # absolute; shown only when the file exists
    caption: str
    target: str  # relative to the report's folder


@dataclass
class Gallery:
    figures: list[Figure]
    css: str | None = None  # an extra class for the HTML (e.g. wider figures)


@dataclass
class Callout:
    """A framed box (the run's nature, at the top): a headline and rows of `name: value`."""

    headline: Inlines
    rows: list[tuple[str, Inlines]] = field(default_factory=list)
    css: str = "callout"


Block = Heading | Para | Table | Figure | Gallery | Callout


def link_target(path: Path, root: Path) -> str:
    """The relative, percent-encoded address of `path` (inside `root`) as a link target."""
    return quote(path.resolve().relative_to(root.resolve()).as_posix() or ".", safe="/")


# ---------------------------------------------------------------------------------------------- text


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clean_text(value: object) -> str:
    """One line of printable text: control characters (ESC, newlines that could start a block) become spaces."""
    return _CONTROL.sub(" ", str(value))


def _inlines(content: Inlines) -> list[Inline]:
    return content if isinstance(content, list) else [content]


# ---------------------------------------------------------------------------------------------- Markdown

_MD_BACKSLASH = re.compile(r"([\\`*\[\]|#])")  # escapable in CommonMark, GFM and Python-Markdown alike
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")  # intraword `_` never emphasises
# `<` opens raw HTML or an autolink only before a letter, / ! ?; `&` is an entity only as &name; or &#n;
_MD_ENTITIES = [(re.compile(r"&(?=#?[A-Za-z0-9]+;)"), "&amp;"), (re.compile(r"<(?=[A-Za-z/!?])"), "&lt;"),
                (re.compile("~"), "&#126;")]
_MD_LINE_START = re.compile(r"^(\s*)([-+>]|\d{1,9}(?=[.)](?:\s|$)))")  # bullet, quote, a list item's number


def md_escape(value: object) -> str:
    """Text that CommonMark / GFM (and Python-Markdown) render literally: no link, image, raw HTML, entity,
    emphasis, strikethrough, code span or table cell can start inside it, and no bare URL is autolinked."""
    text = _MD_BACKSLASH.sub(r"\\\1", clean_text(value))
    for pattern, entity in _MD_ENTITIES:
        text = pattern.sub(entity, text)
    text = _MD_UNDERSCORE.sub(r"\\_", text)
    text = text.replace("://", "&#58;//").replace("www.", "www&#46;")
    return _MD_LINE_START.sub(_escape_line_start, text)


def _escape_line_start(match: re.Match) -> str:
    indent, marker = match.group(1), match.group(2)
    return indent + (marker + "\\" if marker[0].isdigit() else "\\" + marker)


def _md_code(text: str) -> str:
    text = clean_text(text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_inline(item: Inline, in_table: bool) -> str:
    if isinstance(item, Code):
        code = _md_code(item.text)
        return code.replace("|", r"\|") if in_table else code  # GFM splits cells on | even inside code spans
    if isinstance(item, Strong):
        return f"**{md_escape(item.text)}**"
    if isinstance(item, Link):
        return f"[{md_escape(item.text)}]({item.target})"
    return md_escape(item)


def _md_inlines(content: Inlines, in_table: bool = False) -> str:
    return "".join(_md_inline(item, in_table) for item in _inlines(content))


def _md_table(header: list[Inlines], rows: list[list[Inlines]]) -> list[str]:
    lines = ["| " + " | ".join(_md_inlines(cell, True) for cell in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_md_inlines(cell, True) for cell in row) + " |" for row in rows]


def _md_figure(figure: Figure) -> list[str]:
    caption = md_escape(figure.caption.strip()) or "image"  # `*` next to a space would not emphasise
    return [f"![{caption}]({figure.target})", "", f"*{caption}*"]


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines.append("#" * block.level + " " + md_escape(block.text))
        elif isinstance(block, Para):
            lines.append(_md_inlines(block.content))
        elif isinstance(block, Table):
            lines += _md_table(block.header, block.rows)
        elif isinstance(block, Figure):
            lines += _md_figure(block)
        elif isinstance(block, Gallery):
            for figure in block.figures:
                lines += _md_figure(figure) + [""]
        elif isinstance(block, Callout):
            lines.append("> " + _md_inlines(block.headline))
            if block.rows:
                lines += [">"] + [f"> - {md_escape(name)}: {_md_inlines(value)}" for name, value in block.rows]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- HTML


def _h(value: object) -> str:
    return html.escape(clean_text(value), quote=True)


def _html_inline(item: Inline) -> str:
    if isinstance(item, Code):
        return f"<code>{_h(item.text)}</code>"
    if isinstance(item, Strong):
        return f"<strong>{_h(item.text)}</strong>"
    if isinstance(item, Link):
        return f'<a href="{_h(item.target)}">{_h(item.text)}</a>'
    return _h(item)


def _html_inlines(content: Inlines) -> str:
    return "".join(_html_inline(item) for item in _inlines(content))


def data_uri(path: Path) -> str | None:
    """The image as a data: URI (None for a type we do not inline or a file too large to inline)."""
    mime = _MIME.get(path.suffix.lower())
    if mime is None or path.stat().st_size > MAX_INLINE_IMAGE_BYTES:
        return None
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_figure(figure: Figure) -> str:
    caption = _h(figure.caption)
    source = data_uri(figure.path)
    shown = (f'<img src="{source}" alt="{caption}">' if source
             else f"(image not inlined: {_h(figure.path.name)}, open the file)")
    return (f'<figure><a href="{_h(figure.target)}">{shown}</a>'
            f"<figcaption>{caption}</figcaption></figure>")


def _html_table(block: Table) -> str:
    head = "".join(f"<th>{_html_inlines(cell)}</th>" for cell in block.header)
    body = "".join("<tr>" + "".join(f"<td>{_html_inlines(cell)}</td>" for cell in row) + "</tr>"
                   for row in block.rows)
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{_h(block.text)}</h{block.level}>"
    if isinstance(block, Para):
        css = f' class="{_h(block.css)}"' if block.css else ""
        return f"<p{css}>{_html_inlines(block.content)}</p>"
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        return _html_figure(block)
    if isinstance(block, Gallery):
        css = f"gallery {_h(block.css)}" if block.css else "gallery"
        return f'<div class="{css}">' + "".join(_html_figure(f) for f in block.figures) + "</div>"
    rows = "".join(f"<tr><th>{_h(name)}</th><td>{_html_inlines(value)}</td></tr>" for name, value in block.rows)
    table = f"<table>{rows}</table>" if rows else ""
    return f'<div class="{_h(block.css)}"><p class="headline">{_html_inlines(block.headline)}</p>{table}</div>'


def to_html(blocks: list[Block], title: str, css: str) -> str:
    """A complete, self-contained HTML page (inline CSS, images as data: URIs; no script, no remote resource)."""
    body = "\n".join(_html_block(block) for block in blocks)
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>{_h(title)}</title><style>{css}</style></head>\n<body>\n{body}\n</body></html>\n")

"""A report as a list of blocks (headings, paragraphs, tables, figures, preformatted text),
written twice: as Markdown with its figures beside it, and as one self-contained HTML file with
the figures embedded (data URIs), so it can be mailed or opened offline."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

MIME = {".png": "image/png", ".svg": "image/svg+xml", ".pdf": "application/pdf"}

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 72em;
       padding: 0 1.5em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.55em; text-align: right; white-space: nowrap; }
th:nth-child(-n+2), td:nth-child(-n+2) { text-align: left; }
tr:nth-child(even) { background: #f7f7f7; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
footer { margin-top: 3em; font-size: 0.8em; color: #666; border-top: 1px solid #ddd; }
"""


@dataclass
class Document:
    """The blocks of a report, in order; each is (kind, payload)."""

    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        """A section heading."""
        self.blocks.append(("h2", text))

    def para(self, text: str) -> None:
        """A paragraph (Markdown emphasis and code marks allowed)."""
        self.blocks.append(("p", text))

    def table(self, markdown: str) -> None:
        """A Markdown table (pipe rows), with any text lines before or after it."""
        self.blocks.append(("table", markdown))

    def figure(self, path: Path | None, caption: str) -> None:
        """A figure file and its caption (nothing where the figure could not be drawn)."""
        if path is not None:
            self.blocks.append(("figure", (Path(path), caption)))

    def pre(self, text: str) -> None:
        """Preformatted text (as printed by a command)."""
        self.blocks.append(("pre", text))

    def footer(self, text: str) -> None:
        """The closing lines: what made the results."""
        self.blocks.append(("footer", text))

    # ------------------------------------------------------------------ writers

    def markdown(self, folder: Path) -> str:
        """Markdown, figures linked relative to ``folder`` (where report.md is written)."""
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "h2":
                out += [f"## {value}", ""]
            elif kind in ("p", "table"):
                out += [str(value).rstrip(), ""]
            elif kind == "figure":
                path, caption = value
                rel = Path(path).resolve().relative_to(Path(folder).resolve()).as_posix()
                out += [f"![{caption}]({rel})", "", f"*{caption}*", ""]
            elif kind == "pre":
                out += ["```", str(value).rstrip(), "```", ""]
            elif kind == "footer":
                out += ["---", "", str(value).rstrip(), ""]
        return "\n".join(out)

    def html(self) -> str:
        """One self-contained HTML page: figures embedded as data URIs, no external resource."""
        body = [f"<h1>{_inline(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "h2":
                body.append(f"<h2>{_inline(value)}</h2>")
            elif kind == "p":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "table":
                body.append(_table_html(str(value)))
            elif kind == "figure":
                path, caption = value
                mime = MIME.get(Path(path).suffix, "application/octet-stream")
                data = base64.b64encode(Path(path).read_bytes()).decode()
                if mime == "application/pdf":  # a browser shows no PDF in <img>: link it instead
                    body.append(f'<p><a href="data:{mime};base64,{data}" download="{Path(path).name}">'
                                f"{html.escape(caption)} (PDF)</a></p>")
                else:
                    body.append(f'<figure><img src="data:{mime};base64,{data}" alt="{html.escape(caption)}">'
                                f"<figcaption>{_inline(caption)}</figcaption></figure>")
            elif kind == "pre":
                body.append(f"<pre>{html.escape(str(value))}</pre>")
            elif kind == "footer":
                body.append(f"<footer>{'<br>'.join(_inline(line) for line in str(value).splitlines())}</footer>")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{html.escape(self.title)}"
                f"</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    """Markdown's inline marks as HTML: **bold**, *italic*, `code`; everything else escaped."""
    t = html.escape(str(text))
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", t)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", t)


def _table_html(markdown: str) -> str:
    """A Markdown pipe table (and any plain lines around it) as HTML."""
    out, rows = [], []

    def flush():
        if rows:
            head, *body = rows
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</tbody></table>")
            rows.clear()

    for line in markdown.splitlines():
        s = line.strip()
        if s.startswith("|") and s.endswith("|"):
            cells = [c.strip() for c in s[1:-1].split("|")]
            if not all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                rows.append(cells)
        else:
            flush()
            if s:
                out.append(f"<p>{_inline(s)}</p>")
    flush()
    return "\n".join(out)

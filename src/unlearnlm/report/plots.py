"""The report's output side: plots as PNG bytes, and a document rendered to markdown and HTML.

- Plots: matplotlib on the Agg backend (no display); each function takes plain lists from
  ``run.json`` / ``eval.json`` and returns the bytes of one PNG.
- :class:`Report`: a list of blocks (headings, paragraphs, bullet lists, tables, PNG plots),
  built once and rendered twice: markdown (plots are named, they live only in the HTML) and one
  self-contained HTML page (inline CSS, every plot a ``data:image/png;base64`` image, no URL).
  All text is escaped: generations may hold ``<`` or ``&``.
- ``write_report``: both files, each written atomically (``rundir.write_text_atomic``).
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from unlearnlm.rundir import write_text_atomic  # noqa: E402

METRIC_NAMES = {"ma": "MA", "el": "EL", "bleu": "BLEU", "bertscore": "BERTScore"}
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def figure_png(fig) -> bytes:
    """Render a figure to PNG bytes and close it."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _axes(title: str, xlabel: str, ylabel: str, size=(5.4, 3.0)):
    fig, ax = plt.subplots(figsize=size)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _epoch_ticks(ax, epochs: list[int]) -> None:
    if epochs:
        step = max(1, len(epochs) // 12)
        ax.set_xticks(epochs[::step])


def active_plot(epochs: list[int], active: list[int], total: int) -> bytes:
    """Active (not yet forgotten) forget samples after each epoch."""
    fig, ax = _axes("Active forget samples", "epoch", "samples")
    ax.plot(epochs, active, marker="o", color=COLOURS[0])
    ax.set_ylim(0, max(total, 1) * 1.05)
    _epoch_ticks(ax, epochs)
    return figure_png(fig)


def metrics_plot(epochs: list[int], means: dict[str, list], thresholds: dict | None) -> bytes:
    """Mean MA / EL / BLEU / BERTScore per epoch; each threshold as a dashed line."""
    fig, ax = _axes("Forget-set means per epoch", "epoch", "score")
    for colour, (key, label) in zip(COLOURS, METRIC_NAMES.items()):
        points = [(e, v) for e, v in zip(epochs, means.get(key, [])) if v is not None]
        if points:
            ax.plot(*zip(*points), marker="o", color=colour, label=label)
        limit = (thresholds or {}).get(key)
        if isinstance(limit, (int, float)):
            ax.axhline(limit, color=colour, linestyle="--", linewidth=1,
                       label=f"{label} threshold")
    ax.set_ylim(-0.02, 1.05)
    _epoch_ticks(ax, epochs)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return figure_png(fig)


def losses_plot(epochs: list[int], losses: dict[str, list]) -> bytes:
    """Each loss term's epoch mean (``total`` thicker)."""
    fig, ax = _axes("Loss terms per epoch (epoch mean)", "epoch", "loss")
    for colour, (name, values) in zip(COLOURS, losses.items()):
        points = [(e, v) for e, v in zip(epochs, values) if v is not None]
        if points:
            ax.plot(*zip(*points), marker="o", color=colour, label=name,
                    linewidth=2.5 if name == "total" else 1.5)
    ax.axhline(0, color="grey", linewidth=0.8)
    _epoch_ticks(ax, epochs)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return figure_png(fig)


def grouped_bars(title: str, labels: list[str], series: dict[str, list], ylabel: str) -> bytes:
    """One group of bars per label, one bar per series (e.g. before / after / retain);
    ``None`` values are left out."""
    width = 0.8 / max(len(series), 1)
    fig, ax = _axes(title, "", ylabel, size=(max(5.4, 0.6 * len(labels) + 2), 3.4))
    for k, (colour, (name, values)) in enumerate(zip(COLOURS, series.items())):
        xs = [i + (k - (len(series) - 1) / 2) * width for i, v in enumerate(values)
              if v is not None]
        ax.bar(xs, [v for v in values if v is not None], width, label=name, color=colour)
    highest = max((v for values in series.values() for v in values if v is not None), default=0)
    ax.set_ylim(0, highest * 1.15 if highest > 0 else 1)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.grid(False, axis="x")
    ax.legend(fontsize=8)
    return figure_png(fig)


STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f6f7f9;
color:#1d2330}
main{max-width:1180px;margin:0 auto;padding:24px 32px;background:#fff}
h1{font-size:1.6em;border-bottom:2px solid #1f77b4;padding-bottom:6px}
h2{font-size:1.25em;margin-top:1.8em;color:#1f4e79}
table{border-collapse:collapse;margin:10px 0;font-size:0.86em}
th,td{border:1px solid #d5d9e0;padding:4px 8px;text-align:left;vertical-align:top}
th,#run td:first-child{background:#eef2f7;font-weight:600}
tr:nth-child(even) td{background:#fafbfc}
td{max-width:460px;overflow-wrap:anywhere}
figure{display:inline-block;margin:8px 16px 8px 0}
figcaption{font-size:0.8em;color:#555}
img{max-width:100%}
code{background:#eef2f7;padding:1px 4px;border-radius:3px}
"""


# --- the document ----------------------------------------------------------------------------


@dataclass
class Report:
    """A report as blocks: headings, paragraphs, bullet lists, tables and PNG plots."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("heading", text))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def items(self, items: list[str]) -> None:
        self.blocks.append(("items", items))

    def table(self, header: list[str], rows: list[list], key: str = "") -> None:
        """A table; ``key`` becomes the HTML table's id. Cells go through :func:`fmt`."""
        self.blocks.append(("table", header, [[fmt(c) for c in row] for row in rows], key))

    def image(self, caption: str, png: bytes) -> None:
        self.blocks.append(("image", caption, png))

    def markdown(self) -> str:
        lines = [f"# {_md(self.title)}", ""]
        for kind, *rest in self.blocks:
            lines += _MARKDOWN[kind](*rest) + [""]
        return "\n".join(lines)

    def html(self) -> str:
        body = "\n".join(_HTML[kind](*rest) for kind, *rest in self.blocks)
        return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                f"<title>{_escape(self.title)}</title>\n<style>{STYLE}</style>\n</head>\n"
                f"<body>\n<main>\n<h1>{_escape(self.title)}</h1>\n{body}\n</main>\n"
                "</body>\n</html>\n")


def fmt(value) -> str:
    """A table cell: '-' for None, yes/no, 3 decimals (large numbers: 4 significant digits)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


def _printable(text) -> str:
    """The text with control characters (a broken model's output may hold NUL) as U+FFFD."""
    return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "\ufffd", str(text))


def _escape(text) -> str:
    return html.escape(_printable(text))


def _md(text: str) -> str:
    """Markdown-safe text: no tag starts (``<script`` -> ``&lt;script``), one line."""
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", _printable(text)).replace("\n", " ")


def _md_table(header, rows, key) -> list[str]:
    def cells(row):
        return "| " + " | ".join(_md(c).replace("|", "\\|") for c in row) + " |"

    return [cells(header), "|" + "---|" * len(header), *(cells(r) for r in rows)]


_MARKDOWN = {
    "heading": lambda text: [f"## {_md(text)}"],
    "text": lambda text: [_md(text)],
    "items": lambda items: [f"- {_md(i)}" for i in items],
    "table": _md_table,
    "image": lambda caption, png: [f"*Plot: {_md(caption)} (in report.html).*"],
}


def _html_text(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _escape(str(text)))


def _html_table(header, rows, key) -> str:
    head = "".join(f"<th>{_escape(h)}</th>" for h in header) if any(header) else ""
    body = "\n".join("<tr>" + "".join(f"<td>{_escape(c)}</td>" for c in row) + "</tr>"
                     for row in rows)
    ident = f' id="{_escape(key)}"' if key else ""
    thead = f"<thead><tr>{head}</tr></thead>\n" if head else ""
    return f"<table{ident}>\n{thead}<tbody>\n{body}\n</tbody>\n</table>"


def _html_image(caption: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    alt = _escape(caption)
    return (f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
            f"<figcaption>{alt}</figcaption></figure>")


_HTML = {
    "heading": lambda text: f"<h2>{_escape(text)}</h2>",
    "text": lambda text: f"<p>{_html_text(text)}</p>",
    "items": lambda items: "<ul>" + "".join(f"<li>{_html_text(i)}</li>" for i in items) + "</ul>",
    "table": _html_table,
    "image": _html_image,
}


def write_report(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``out_dir``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "report.md", out_dir / "report.html"
    write_text_atomic(paths[0], report.markdown())
    write_text_atomic(paths[1], report.html())
    return paths



"""`ExplainReport.save()`: the cache regions as a strip of blocks per region (SVG, or PNG with matplotlib).

Each region is a row: one box per block, Fn blue, Mn orange (the blocks inside the `torch.cond`, bracketed
and labelled), Bn green; block-list names under their span, the streams the region caches and its spec on
the left. Box widths shrink with the block count, so 57 Flux blocks fit as well as 6.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from xml.sax.saxutils import escape


class Report(Protocol):
    """What a picture needs of `explain.ExplainReport` (named here so that this module imports nothing back)."""

    model: str
    specs: str
    regions: list[Any]  # each with name, spec, streams, blocks, classes, Fn, Mn, Bn


COLORS = {"Fn": "#4C78A8", "Mn": "#F58518", "Bn": "#54A24B"}
WIDTH, LEFT, ROW, BOX_H = 1200, 250, 110, 34


@dataclass
class Shape:
    kind: str  # "rect" or "text"
    x: float
    y: float
    w: float = 0.0
    h: float = 0.0
    fill: str = "none"
    text: str = ""
    size: int = 11
    anchor: str = "start"


def layout(report: Report) -> tuple[list[Shape], int]:
    shapes = [Shape("text", 10, 22, text=f"{report.model}: {len(report.regions)} cache region(s), cache={report.specs}",
                    size=14)]
    for i, r in enumerate(report.regions):
        y0 = 50 + i * ROW
        n = len(r.blocks)
        bw = min(28.0, (WIDTH - LEFT - 20) / n)
        shapes += [Shape("text", 10, y0 + 14, text=r.name if len(r.name) < 38 else r.name[:35] + "...", size=12),
                   Shape("text", 10, y0 + 30, text=f"spec {r.spec}"[:40], size=10),
                   Shape("text", 10, y0 + 44, text=f"streams cached: {', '.join(r.streams)}", size=10)]
        for k in range(n):
            part = "Fn" if k < r.Fn else ("Bn" if k >= n - r.Bn else "Mn")
            shapes.append(Shape("rect", LEFT + k * bw, y0 + 10, bw - 1, BOX_H, COLORS[part]))
        lo, hi = LEFT + r.Fn * bw, LEFT + (n - r.Bn) * bw
        shapes += [Shape("rect", lo - 2, y0 + 6, hi - lo + 2, BOX_H + 8, "none"),
                   Shape("text", (lo + hi) / 2, y0 + 2, text=f"torch.cond: Mn={r.Mn} served from the cache when "
                         "use_cache", size=10, anchor="middle")]
        start = 0
        for k in range(1, n + 1):  # a label under each block list's span
            if k == n or r.blocks[k].rsplit(".", 1)[0] != r.blocks[start].rsplit(".", 1)[0]:
                name, first = r.blocks[start].rsplit(".", 1)
                last = r.blocks[k - 1].rsplit(".", 1)[1]
                shapes.append(Shape("text", LEFT + (start + k) / 2 * bw, y0 + BOX_H + 26,
                                    text=f"{name}[{first}..{last}] ({r.classes[start]})", size=10, anchor="middle"))
                start = k
    legend_y = 50 + len(report.regions) * ROW
    for j, (part, color) in enumerate(COLORS.items()):
        shapes += [Shape("rect", LEFT + j * 170, legend_y, 14, 14, color),
                   Shape("text", LEFT + j * 170 + 20, legend_y + 12,
                         text={"Fn": "Fn: computed, drives the diff", "Mn": "Mn: cached or computed",
                               "Bn": "Bn: computed"}[part], size=10)]
    return shapes, legend_y + 30


def to_svg(shapes: list[Shape], height: int) -> str:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>']
    for s in shapes:
        if s.kind == "rect":
            stroke = ' stroke="black" stroke-dasharray="4,2"' if s.fill == "none" else ""
            out.append(f'<rect x="{s.x:.1f}" y="{s.y:.1f}" width="{s.w:.1f}" height="{s.h:.1f}" fill="{s.fill}"{stroke}/>')
        else:
            out.append(f'<text x="{s.x:.1f}" y="{s.y:.1f}" font-size="{s.size}" text-anchor="{s.anchor}">'
                       f"{escape(s.text)}</text>")
    return "\n".join(out + ["</svg>"]) + "\n"


def to_png(shapes: list[Shape], height: int, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("saving a .png needs matplotlib (pip install 'dit-cache-fx[demo]'); .svg needs "
                          "nothing") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig = plt.figure(figsize=(WIDTH / 100, height / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(height, 0)
    ax.axis("off")
    for s in shapes:
        if s.kind == "rect":
            ax.add_patch(Rectangle((s.x, s.y), s.w, s.h, facecolor=s.fill if s.fill != "none" else "none",
                                   edgecolor="black" if s.fill == "none" else "none", linestyle="--"))
        else:
            ax.text(s.x, s.y, s.text, fontsize=s.size * 0.75, ha={"middle": "center"}.get(s.anchor, "left"),
                    va="baseline")
    fig.savefig(path)
    plt.close(fig)


def save_regions(report: Report, path: str | Path) -> str:
    path = Path(path)
    if not report.regions:
        raise ValueError("no cache region to draw")
    shapes, height = layout(report)
    if path.suffix == ".svg":
        path.write_text(to_svg(shapes, height))
    elif path.suffix == ".png":
        to_png(shapes, height, path)
    else:
        raise ValueError(f"save to a .svg or .png file, got {path.name!r}")
    return str(path)

"""Server-rendered SVG charts for the dashboard: no chart library, no JavaScript,
readable by screen readers through <title> and a text table next to each chart."""

from __future__ import annotations

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from diagnostics.selectors.dashboards import ModelAgreement


def _luminance(rgb: tuple[int, int, int]) -> float:
    def channel(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _cell_colour(fraction: float) -> tuple[str, str]:
    """Fill from white to dark blue, and whichever text colour contrasts more with it.
    The counts are bold 19 px (large text): at worst about 4:1, above WCAG's 3:1."""
    fill = (
        round(255 - fraction * (255 - 0x1D)),
        round(255 - fraction * (255 - 0x4E)),
        round(255 - fraction * (255 - 0xD8)),
    )
    lum = _luminance(fill)
    dark = (lum + 0.05) / (_luminance((0x11, 0x18, 0x27)) + 0.05)
    light = 1.05 / (lum + 0.05)
    return "#{:02x}{:02x}{:02x}".format(*fill), ("#111827" if dark >= light else "#ffffff")


def confusion_svg(agreement: ModelAgreement) -> SafeString:
    return matrix_svg(
        ident=f"cm-{agreement.model_version.uuid}",
        title=f"Confusion matrix of {agreement.model_version}: physician's stage (rows) by model (columns)",
        labels=agreement.labels,
        matrix=agreement.confusion,
        rows="Physician signed",
        columns="Model predicted",
        cell=96,
    )


def trend_svg(agreement: ModelAgreement) -> SafeString:
    """Daily accuracy as a line (0..100 %), one point per signing day."""
    points = agreement.trend
    width, height, left, bottom, top = 420, 160, 40, 30, 10
    plot_w, plot_h = width - left - 10, height - top - bottom
    title = escape(f"Daily agreement of {agreement.model_version} with physicians")
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart trend" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" aria-labelledby="tr-{agreement.model_version.uuid}">',
        f'<title id="tr-{agreement.model_version.uuid}">{title}</title>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#374151"/>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#374151"/>',
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" font-size="10" fill="#111827">100%</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" font-size="10" fill="#111827">0%</text>',
    ]
    coords = []
    for n, (day, _count, acc) in enumerate(points):
        x = left + (plot_w * n / (len(points) - 1) if len(points) > 1 else plot_w / 2)
        y = top + plot_h * (1 - acc)
        coords.append((x, y, day, acc))
    if len(coords) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in coords)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#1d4ed8" stroke-width="2"/>')
    for x, y, day, acc in coords:
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#1d4ed8">'
            f"<title>{day.isoformat()}: {acc:.0%}</title></circle>"
        )
    if coords:
        parts.append(
            f'<text x="{left}" y="{height - 8}" font-size="10" fill="#111827">{coords[0][2].isoformat()}</text>'
            f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end" font-size="10" '
            f'fill="#111827">{coords[-1][2].isoformat()}</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - only numbers and escaped text


def matrix_svg(
    *,
    ident: str,
    title: str,
    labels: list[str],
    matrix: list[list[int]],
    rows: str,
    columns: str,
    cell: int = 64,
) -> SafeString:
    """A k × k count matrix, rows ``rows``' stages and columns ``columns``' (the dashboard's
    physician-by-model confusion, a reader study's two raters), each cell shaded by its
    count with text that keeps its contrast. ``cell``: the side of a cell in pixels."""
    k = len(labels)
    left, top = cell + 60, 40
    width, height = left + k * cell + 10, top + k * cell + 30
    peak = max((max(row) for row in matrix), default=0) or 1
    col_chars, row_chars = cell // 6, cell // 4
    ident = escape(ident)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart confusion" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" aria-labelledby="{ident}">',
        f'<title id="{ident}">{escape(title)}</title>',
        f'<text x="{left + k * cell / 2}" y="14" text-anchor="middle" font-size="12" '
        f'fill="#111827">{escape(columns[:40])}</text>',
    ]
    for j, label in enumerate(labels):
        parts.append(
            f'<text x="{left + j * cell + cell / 2}" y="{top - 8}" text-anchor="middle" font-size="11" '
            f'fill="#111827">{escape(label[:col_chars])}</text>'
        )
    for i, row in enumerate(matrix):
        y = top + i * cell
        parts.append(
            f'<text x="{left - 6}" y="{y + cell / 2 + 4}" text-anchor="end" font-size="11" '
            f'fill="#111827">{escape(labels[i][:row_chars])}</text>'
        )
        for j, count in enumerate(row):
            fill, ink = _cell_colour(count / peak)
            x = left + j * cell
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="#6b7280" '
                f'data-row="{i}" data-col="{j}" data-count="{count}"/>'
                f'<text x="{x + cell / 2}" y="{y + cell / 2 + 6}" text-anchor="middle" font-size="19" '
                f'font-weight="700" fill="{ink}">{count}</text>'
            )
    parts.append(
        f'<text x="12" y="{top + k * cell / 2}" font-size="12" fill="#111827" '
        f'transform="rotate(-90 12 {top + k * cell / 2})" text-anchor="middle">{escape(rows[:30])}</text>'
    )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every label is escaped above

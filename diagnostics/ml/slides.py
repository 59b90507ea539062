"""Whole-slide inference without Django: tissue mask on a low level, a tile grid at the
model's resolution, tiles read ahead in threads and fed to the network in batches, and
the slide-level method that turns a map of tile probabilities into one answer per stage
and the regions a pathologist should look at first.

The slide is anything with OpenSlide's reading calls (`dimensions`, `level_count`,
`level_downsamples`, `get_best_level_for_downsample`, `read_region`); the network is a
callable from a uint8 batch (N, s, s, 3) to probabilities (N, K), or to probabilities and
a bool (N,) per tile: outside what the model was trained on. Memory stays bounded:
the slide is never held as one array, only the tissue thumbnail (a few pixels per tile)
and the batches in flight.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image


class SlideReader(Protocol):
    """What the slide path reads from a slide (OpenSlide's interface)."""

    @property
    def dimensions(self) -> tuple[int, int]: ...

    @property
    def level_count(self) -> int: ...

    @property
    def level_downsamples(self) -> Sequence[float]: ...

    @property
    def level_dimensions(self) -> Sequence[tuple[int, int]]: ...

    def get_best_level_for_downsample(self, downsample: float) -> int: ...

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image: ...


def model_mpp(mpp: float | None) -> float:
    """A bundle's micrometres per pixel, which the slide path needs to size its tiles."""
    if mpp is None:
        raise ValueError("the model bundle states no micrometres per pixel (manifest 'mpp'): it cannot read slides")
    return mpp


# Probabilities (N, K), or (probabilities, outside) with outside a bool (N,): each tile
# outside what the model was trained on (the runner's out-of-distribution rule).
Predict = Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class SlideMethod:
    """The slide-level method and its parameters (chosen on development slides made from
    PCam *train* patches; see the demo model card). A patch classifier's false positives
    on normal tissue are scattered single tiles, a metastasis is a contiguous region:

    1. smooth the tile probability of "at least this stage" over each tile's 3x3
       neighbourhood of tissue tiles (``smoothing_radius``), which pulls isolated false
       positives down and leaves the inside of a region high;
    2. keep tiles whose smoothed probability is at least ``threshold`` and join them into
       8-connected components;
    3. a component's mass is the sum of its tiles' smoothed probabilities; the slide's
       evidence is the largest mass, and P(slide >= stage) = sigmoid((mass - mass_mid) /
       mass_scale).
    """

    tissue_min_fraction: float = 0.25
    smoothing_radius: int = 1
    threshold: float = 0.6
    mass_mid: float = 4.0
    mass_scale: float = 1.0
    top_k: int = 5

    def to_dict(self) -> dict[str, Any]:
        return {"name": "smoothed-connected-components", **asdict(self)}


@dataclass(frozen=True)
class TileGrid:
    cols: int
    rows: int
    tile_px: float  # level-0 pixels per tile side (input_size * model mpp / slide mpp)
    level: int  # the level tiles are read from
    level_downsample: float
    read_px: int  # tile side at that level, resized to input_size when different
    input_size: int

    def origin(self, col: int, row: int) -> tuple[int, int]:
        return int(round(col * self.tile_px)), int(round(row * self.tile_px))


@dataclass
class Region:
    rank: int
    x: int  # level-0 pixels
    y: int
    width: int
    height: int
    tiles: int
    mass: float
    max_probability: float
    kind: str  # "component" (connected tiles above threshold) or "tile" (a single top tile)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SlideAnalysis:
    grid: TileGrid
    labels: list[str]
    tissue: np.ndarray  # (rows, cols) bool
    probabilities: np.ndarray  # (rows, cols, K) float32, NaN off tissue
    slide_probabilities: list[float]
    regions: list[Region]
    tumour: np.ndarray  # (rows, cols) bool: tiles of components that alone call the slide positive
    score: np.ndarray  # (rows, cols) smoothed probability of the most decisive stage (localisation score)
    evidence: list[float]  # largest component mass per stage >= 1
    method: SlideMethod
    seconds: dict[str, float] = field(default_factory=dict)
    # (rows, cols) bool: tissue tiles outside what the model was trained on; None when
    # the network gave no such flag (a bundle without an out-of-distribution reference).
    outside: np.ndarray | None = None

    @property
    def tissue_tiles(self) -> int:
        return int(self.tissue.sum())

    @property
    def outside_tiles(self) -> int | None:
        return None if self.outside is None else int((self.outside & self.tissue).sum())

    def tile_map(self) -> dict[str, Any]:
        """The per-tile probabilities as JSON-ready data: one row per tissue tile."""
        rows, cols = np.nonzero(self.tissue)
        tiles = [
            [int(c), int(r), *[round(float(p), 4) for p in self.probabilities[r, c]]]
            for r, c in zip(rows.tolist(), cols.tolist(), strict=True)
        ]
        return {
            "cols": self.grid.cols,
            "rows": self.grid.rows,
            "tile_px": self.grid.tile_px,
            "labels": self.labels,
            "columns": ["col", "row", *self.labels],
            "tiles": tiles,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method.to_dict(),
            "grid": [self.grid.cols, self.grid.rows],
            "tile_px": self.grid.tile_px,
            "level": self.grid.level,
            "tissue_tiles": self.tissue_tiles,
            "tumour_tiles": int(self.tumour.sum()),
            "evidence": [round(e, 4) for e in self.evidence],
            "outside_tiles": self.outside_tiles,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


class SlideAnalysisError(Exception):
    """The slide cannot be analysed with this model (phrased for the job's error field)."""


def plan_grid(slide: SlideReader, *, slide_mpp: float, model_mpp: float, input_size: int) -> TileGrid:
    """Tiles of input_size pixels at the model's resolution, read from the nearest level
    at least as fine as needed (then resized), so every tile shows the model's field."""
    if slide_mpp <= 0 or model_mpp <= 0:
        raise SlideAnalysisError("the slide and the model must both state their micrometres per pixel")
    width, height = slide.dimensions
    tile_px = input_size * model_mpp / slide_mpp
    cols, rows = int(width // tile_px), int(height // tile_px)
    if cols < 1 or rows < 1:
        raise SlideAnalysisError(
            f"the slide ({width}x{height} px at {slide_mpp:.3f} um/px) is smaller than one tile of the model "
            f"({input_size} px at {model_mpp:.3f} um/px)"
        )
    wanted = tile_px / input_size
    level = slide.get_best_level_for_downsample(wanted)
    downsample = float(slide.level_downsamples[level])
    read_px = max(1, int(round(tile_px / downsample)))
    return TileGrid(cols, rows, tile_px, level, downsample, read_px, input_size)


def _rgb(region: Image.Image) -> np.ndarray:
    """OpenSlide's RGBA (transparent where the slide has no data) as RGB on white."""
    arr = np.asarray(region)
    if arr.shape[-1] == 4:
        rgb = arr[..., :3].copy()
        rgb[arr[..., 3] == 0] = 255
        return rgb
    return np.array(region.convert("RGB"))


def tissue_mask(
    slide: SlideReader, grid: TileGrid, *, px_per_tile: int = 4, min_fraction: float = 0.25, block_px: int = 2048
) -> np.ndarray:
    """(rows, cols) bool: tiles whose low-resolution thumbnail is mostly tissue.

    The thumbnail has ``px_per_tile`` pixels per tile side, read block by block from the
    coarsest level that still has them, so a slide of any size costs a few MB here. A
    pixel is tissue when it is coloured (stain) or dark, and not black (scanner borders):
    glass is near-white and grey."""
    s = px_per_tile
    level = slide.get_best_level_for_downsample(grid.tile_px / s)
    ds = float(slide.level_downsamples[level])
    per_block = max(1, int(block_px * ds // grid.tile_px))
    thumb = np.full((grid.rows * s, grid.cols * s, 3), 255, np.uint8)
    for r0 in range(0, grid.rows, per_block):
        for c0 in range(0, grid.cols, per_block):
            nr, nc = min(per_block, grid.rows - r0), min(per_block, grid.cols - c0)
            x0, y0 = grid.origin(c0, r0)
            x1, y1 = grid.origin(c0 + nc, r0 + nr)
            size = (max(1, int(round((x1 - x0) / ds))), max(1, int(round((y1 - y0) / ds))))
            block = Image.fromarray(_rgb(slide.read_region((x0, y0), level, size)))
            block = block.resize((nc * s, nr * s), Image.Resampling.BOX)
            thumb[r0 * s : (r0 + nr) * s, c0 * s : (c0 + nc) * s] = np.asarray(block)
    px = thumb.astype(np.int16)
    hi, lo = px.max(axis=-1), px.min(axis=-1)
    coloured = (hi - lo) > 20
    dark = hi < 200
    tissue_px = (coloured | dark) & (hi > 30)
    fraction = tissue_px.reshape(grid.rows, s, grid.cols, s).mean(axis=(1, 3))
    return np.asarray(fraction >= min_fraction, dtype=bool)


def read_tile(slide: SlideReader, grid: TileGrid, col: int, row: int) -> np.ndarray:
    x, y = grid.origin(col, row)
    region = slide.read_region((x, y), grid.level, (grid.read_px, grid.read_px))
    arr = _rgb(region)
    if grid.read_px != grid.input_size:
        # Bilinear, the training pipeline's resize (preprocess.decode_rgb).
        arr = np.asarray(
            Image.fromarray(arr).resize((grid.input_size, grid.input_size), Image.Resampling.BILINEAR), np.uint8
        )
    return arr


def iter_tile_batches(
    slide: SlideReader,
    grid: TileGrid,
    coords: Sequence[tuple[int, int]],
    *,
    batch_size: int,
    threads: int,
    ahead: int | None = None,
) -> Iterator[tuple[list[tuple[int, int]], np.ndarray]]:
    """Batches of (col, row) coordinates with their decoded tiles, in order. Worker
    threads read and decode whole batches while the caller runs the network on the
    previous one; at most ``ahead`` batches are in flight, which bounds memory.
    OpenSlide's C reads and Pillow's resize release the GIL, so the threads overlap."""
    ahead = ahead or threads + 1
    s = grid.input_size

    def load(chunk: list[tuple[int, int]]) -> np.ndarray:
        out = np.empty((len(chunk), s, s, 3), np.uint8)
        for i, (c, r) in enumerate(chunk):
            out[i] = read_tile(slide, grid, c, r)
        return out

    chunks = (list(coords[i : i + batch_size]) for i in range(0, len(coords), batch_size))
    pending: deque[tuple[list[tuple[int, int]], Future[np.ndarray]]] = deque()
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="slide-read") as pool:
        for chunk in chunks:
            pending.append((chunk, pool.submit(load, chunk)))
            if len(pending) >= ahead:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def _neighbourhood_mean(values: np.ndarray, weights: np.ndarray, radius: int) -> np.ndarray:
    """Mean of ``values`` over the (2r+1)^2 window, counting only cells with weight 1."""
    if radius <= 0:
        return np.where(weights > 0, values, 0.0)
    v = np.pad(values * weights, radius)
    w = np.pad(weights, radius)
    rows, cols = values.shape
    total = np.zeros_like(values, dtype=np.float64)
    count = np.zeros_like(values, dtype=np.float64)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            total += v[dy : dy + rows, dx : dx + cols]
            count += w[dy : dy + rows, dx : dx + cols]
    return np.where(weights > 0, total / np.maximum(count, 1.0), 0.0)


def connected_components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components of a boolean grid, as lists of (row, col)."""
    seen = np.zeros_like(mask, dtype=bool)
    rows, cols = mask.shape
    found: list[list[tuple[int, int]]] = []
    for r0, c0 in zip(*np.nonzero(mask), strict=True):
        if seen[r0, c0]:
            continue
        stack = [(int(r0), int(c0))]
        seen[r0, c0] = True
        comp: list[tuple[int, int]] = []
        while stack:
            r, c = stack.pop()
            comp.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < rows and 0 <= cc < cols and mask[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        stack.append((rr, cc))
        found.append(comp)
    return found


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


@dataclass
class Aggregate:
    slide_probabilities: list[float]
    evidence: list[float]
    score: np.ndarray
    tumour: np.ndarray
    regions: list[Region]


def aggregate(probabilities: np.ndarray, tissue: np.ndarray, grid: TileGrid, method: SlideMethod) -> Aggregate:
    """From tile probabilities (rows, cols, K) to the slide's answer (see SlideMethod)."""
    k = probabilities.shape[-1]
    weights = tissue.astype(np.float64)
    p = np.nan_to_num(probabilities.astype(np.float64), nan=0.0)
    # P(tile >= stage s) for s = 1..K-1: for two labels simply P(positive).
    at_least = np.flip(np.cumsum(np.flip(p, axis=-1), axis=-1), axis=-1)
    exceed: list[float] = []
    evidence: list[float] = []
    decisive_score = np.zeros(tissue.shape)
    decisive_components: list[tuple[float, list[tuple[int, int]]]] = []
    tumour = np.zeros(tissue.shape, bool)
    for stage in range(1, k):
        raw = at_least[..., stage]
        score = _neighbourhood_mean(raw, weights, method.smoothing_radius)
        comps = connected_components((score >= method.threshold) & tissue)
        scored = sorted(
            ((float(sum(score[r, c] for r, c in comp)), comp) for comp in comps), key=lambda t: t[0], reverse=True
        )
        mass = scored[0][0] if scored else 0.0
        evidence.append(mass)
        exceed.append(_sigmoid((mass - method.mass_mid) / method.mass_scale))
        if stage == 1:
            # Regions and the localisation score come from "any disease" (stage >= 1):
            # that is where the pathologist should look first whatever the stage.
            decisive_score, decisive_components = score, scored
            for m, comp in scored:
                if m >= method.mass_mid:
                    for r, c in comp:
                        tumour[r, c] = True
    # P(slide >= s) must not rise with s; the stage probabilities are the differences.
    for i in range(1, len(exceed)):
        exceed[i] = min(exceed[i], exceed[i - 1])
    bounds = [1.0, *exceed, 0.0]
    slide_probabilities = [max(0.0, bounds[i] - bounds[i + 1]) for i in range(k)]
    total = sum(slide_probabilities) or 1.0
    slide_probabilities = [v / total for v in slide_probabilities]

    regions: list[Region] = []
    raw1 = at_least[..., 1] if k > 1 else at_least[..., 0]
    for mass, comp in decisive_components[: method.top_k]:
        rs = [r for r, _ in comp]
        cs = [c for _, c in comp]
        x0, y0 = grid.origin(min(cs), min(rs))
        x1, y1 = grid.origin(max(cs) + 1, max(rs) + 1)
        regions.append(
            Region(
                rank=len(regions) + 1,
                x=x0,
                y=y0,
                width=x1 - x0,
                height=y1 - y0,
                tiles=len(comp),
                mass=round(mass, 4),
                max_probability=round(float(max(raw1[r, c] for r, c in comp)), 4),
                kind="component",
            )
        )
    if len(regions) < method.top_k:
        # Too few regions above the threshold: show the most suspicious single tiles too,
        # so the gallery always points somewhere (a negative slide's "worst" tiles).
        taken = {(r, c) for _, comp in decisive_components for r, c in comp}
        flat = np.where(tissue, raw1, -1.0)
        for idx in np.argsort(flat, axis=None)[::-1]:
            if len(regions) >= method.top_k:
                break
            r, c = divmod(int(idx), tissue.shape[1])
            if flat[r, c] < 0:
                break
            if (r, c) in taken:
                continue
            x0, y0 = grid.origin(c, r)
            x1, y1 = grid.origin(c + 1, r + 1)
            regions.append(
                Region(len(regions) + 1, x0, y0, x1 - x0, y1 - y0, 1, round(float(decisive_score[r, c]), 4),
                       round(float(flat[r, c]), 4), "tile")
            )  # fmt: skip
    return Aggregate(slide_probabilities, evidence, decisive_score, tumour, regions)


def analyse(
    slide: SlideReader,
    *,
    slide_mpp: float,
    model_mpp: float,
    input_size: int,
    labels: list[str],
    predict: Predict,
    method: SlideMethod | None = None,
    batch_size: int = 64,
    threads: int = 4,
    progress: Callable[[int, int], None] | None = None,
    max_tiles: int | None = None,
) -> SlideAnalysis:
    """Tissue mask, tile grid, batched inference with read-ahead, slide-level answer."""
    method = method or SlideMethod()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    grid = plan_grid(slide, slide_mpp=slide_mpp, model_mpp=model_mpp, input_size=input_size)
    tissue = tissue_mask(slide, grid, min_fraction=method.tissue_min_fraction)
    seconds["tissue"] = time.perf_counter() - t0
    coords = [(int(c), int(r)) for r, c in zip(*np.nonzero(tissue), strict=True)]
    if max_tiles is not None and len(coords) > max_tiles:
        raise SlideAnalysisError(f"the slide has {len(coords):,} tissue tiles; the limit is {max_tiles:,}")
    probs = np.full((grid.rows, grid.cols, len(labels)), np.nan, np.float32)
    outside: np.ndarray | None = None
    done = 0
    if progress:
        progress(0, len(coords))
    t1 = time.perf_counter()
    network = 0.0
    for chunk, batch in iter_tile_batches(slide, grid, coords, batch_size=batch_size, threads=threads):
        tn = time.perf_counter()
        answer = predict(batch)
        network += time.perf_counter() - tn
        flags = None
        if isinstance(answer, tuple):
            answer, flags = answer[0], np.asarray(answer[1], bool)
            if flags.shape != (len(chunk),):
                raise SlideAnalysisError(f"the model flagged {flags.shape} for {len(chunk)} tiles")
            if outside is None:
                outside = np.zeros((grid.rows, grid.cols), bool)
        out = np.asarray(answer, np.float32)
        if out.shape != (len(chunk), len(labels)):
            raise SlideAnalysisError(f"the model returned {out.shape} for {len(chunk)} tiles of {len(labels)} labels")
        for i, ((c, r), row) in enumerate(zip(chunk, out, strict=True)):
            probs[r, c] = row
            if flags is not None and outside is not None:
                outside[r, c] = flags[i]
        done += len(chunk)
        if progress:
            progress(done, len(coords))
    seconds["tiles"] = time.perf_counter() - t1
    seconds["network"] = network
    t2 = time.perf_counter()
    agg = aggregate(probs, tissue, grid, method)
    seconds["aggregate"] = time.perf_counter() - t2
    return SlideAnalysis(
        grid=grid,
        labels=list(labels),
        tissue=tissue,
        probabilities=probs,
        slide_probabilities=agg.slide_probabilities,
        regions=agg.regions,
        tumour=agg.tumour,
        score=agg.score,
        evidence=agg.evidence,
        method=method,
        seconds=seconds,
        outside=outside,
    )


def overlay_rgba(analysis: SlideAnalysis) -> np.ndarray:
    """(rows, cols, 4) RGBA, one pixel per tile: the probability of stage >= 1 coloured
    by the heat-map ramp, transparent off tissue."""
    from .heatmap import colorize

    p = np.nan_to_num(analysis.probabilities.astype(np.float64), nan=0.0)
    at_least = p[..., 1:].sum(axis=-1) if p.shape[-1] > 1 else p[..., 0]
    rgba = colorize(at_least)
    rgba[..., 3] = np.where(analysis.tissue, np.maximum(rgba[..., 3], 40), 0)
    return rgba


# --- evaluation against per-cell ground truth ------------------------------------------


def sensitivity_at_fp(
    scores: list[np.ndarray], truth: list[np.ndarray], tissue: list[np.ndarray], fp_per_slide: float
) -> float:
    """Fraction of true tumour cells whose score reaches a threshold that leaves on
    average at most ``fp_per_slide`` false-positive tiles per slide (all slides pooled)."""
    pos_total = int(sum(int(t.sum()) for t in truth))
    if pos_total == 0:
        return float("nan")
    s_all = np.concatenate([s[m] for s, m in zip(scores, tissue, strict=True)])
    y_all = np.concatenate([t[m] for t, m in zip(truth, tissue, strict=True)])
    order = np.argsort(-s_all, kind="stable")
    s_sorted, y_sorted = s_all[order], y_all[order]
    allowed = fp_per_slide * len(scores)
    best = 0.0
    tp = fp = 0
    i = 0
    n = len(s_sorted)
    while i < n:
        j = i
        while j < n and s_sorted[j] == s_sorted[i]:  # tied scores go in together
            j += 1
        tp_next = tp + int(y_sorted[i:j].sum())
        fp_next = fp + int((~y_sorted[i:j].astype(bool)).sum())
        if fp_next > allowed:
            break
        tp, fp = tp_next, fp_next
        best = tp / pos_total
        i = j
    return best


def dice(predicted: list[np.ndarray], truth: list[np.ndarray]) -> float:
    inter = sum(int((p & t).sum()) for p, t in zip(predicted, truth, strict=True))
    size = sum(int(p.sum()) + int(t.sum()) for p, t in zip(predicted, truth, strict=True))
    return 1.0 if size == 0 else 2.0 * inter / size


def truth_grid(truth: dict[str, Any], grid: TileGrid, slide_mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """The ground truth (cells of truth['cell_px'] pixels) on the analysis grid: a tile is
    tissue / tumour when the cell under its centre is."""
    cw, ch = truth["grid"]
    cell = float(truth["cell_px"])
    cells = np.zeros((ch, cw), np.uint8)  # 0 glass, 1 tissue, 2 tumour
    for c in truth["cells"]:
        cells[c["y"], c["x"]] = 2 if c["label"] != truth["labels"][0] else 1
    t_tissue = np.zeros((grid.rows, grid.cols), bool)
    t_tumour = np.zeros((grid.rows, grid.cols), bool)
    for r in range(grid.rows):
        for c in range(grid.cols):
            cx = int(((c + 0.5) * grid.tile_px) // cell)
            cy = int(((r + 0.5) * grid.tile_px) // cell)
            if 0 <= cy < ch and 0 <= cx < cw:
                t_tissue[r, c] = cells[cy, cx] >= 1
                t_tumour[r, c] = cells[cy, cx] == 2
    return t_tissue, t_tumour

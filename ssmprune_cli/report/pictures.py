"""Token importance, seen and summarised: per-site score statistics (`analyze --calib`), importance.png (sample
images, token scores and the kept tokens at each prune point) and a tokens-per-block chart. Drawn with Pillow
(matplotlib is not a dependency).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from ssmprune_cli.pruning.importance import reads_delta, token_scores

CELL = 112          # px per image cell in importance.png
PAD = 6
HEADER = 18
# A perceptually ordered dark-blue → teal → yellow ramp (anchor colours, linearly interpolated).
_RAMP = np.array([[48, 18, 59], [65, 105, 225], [33, 166, 133], [170, 220, 50], [253, 231, 37]], dtype=np.float32)


# ----------------------------------------------------------------------------------------------- scores
@dataclass
class SiteScores:
    """Scores of the tokens present at one site for a batch: `positions` (b, K) in the site's full sequence,
    `scores` (b, K), and `kept` (b, K') the positions that go on (equal to positions where nothing is pruned)."""

    site: str
    length: int
    grid: Optional[Tuple[int, int]]
    protected: List[int]
    positions: Tensor
    scores: Tensor
    kept: Tensor


def _score_name(model: nn.Module) -> str:
    spec = getattr(model, "spec", None)
    name = spec.score if spec is not None else "clip"
    # random scores say nothing about the image, and Δ-based ones (mtr) read what this picture does not capture:
    # show the paper's
    return "clip" if name == "random" or reads_delta(name) else name


@torch.no_grad()
def site_scores(model: nn.Module, x: Tensor, sites: Optional[Sequence[str]] = None) -> List[SiteScores]:
    """Run `model` (dense or PrunedModel) on x and return the token scores at `sites` (default: a pruned model's
    prune points, every site of a dense one), with the tokens each site keeps."""
    core = getattr(model, "model", model)
    spec = getattr(model, "spec", None)
    prune_hook = getattr(model, "prune_hook", None) if spec is not None else None
    if sites is None:
        sites = [p.site for p in spec.points] if spec is not None else core.prune_sites()
    wanted = set(sites)
    score = _score_name(model)
    captured: Dict[str, Tensor] = {}
    handles = [core.score_module(s).register_forward_pre_hook(_capture(captured, s)) for s in wanted]
    out: List[SiteScores] = []

    def hook(site, tensors, layout):
        result = prune_hook(site, tensors, layout) if prune_hook is not None else (tensors, layout)
        if site in wanted:
            L, grid, protected = core.site_tokens(site)
            b, K = captured[site].shape[:2]
            before = torch.arange(L, device=x.device).expand(b, L) if layout is None else layout.keep
            after = result[1].keep if result[1] is not None else before
            out.append(SiteScores(site, L, grid, list(protected), before.cpu(),
                                  token_scores(score, captured.pop(site)).float().cpu(), after.cpu()))
        captured.pop(site, None)
        return result

    try:
        core(x, hook=hook)
    finally:
        for h in handles:
            h.remove()
    return out


def _capture(store: Dict[str, Tensor], site: str) -> Callable:
    def pre_hook(module, args):
        store[site] = args[0]
    return pre_hook


def patch_index(positions: Tensor, protected: Sequence[int]) -> Tensor:
    """Sequence position → index in the patch grid (protected tokens such as Vim's middle class token removed);
    protected positions map to -1."""
    idx = positions.clone()
    for p in sorted(protected):
        idx = torch.where(positions > p, idx - 1, idx)
    for p in protected:
        idx = torch.where(positions == p, torch.full_like(idx, -1), idx)
    return idx


# ----------------------------------------------------------------------------------------------- statistics
@torch.no_grad()
def importance_statistics(model: nn.Module, batches: Iterable[Tensor], sites: Optional[Sequence[str]] = None,
                          progress: Optional[Callable[[int], None]] = None) -> List[Dict[str, Any]]:
    """Per site, over the images of `batches` (patch tokens only): how peaked the scores are and how stable the
    ranking is from one site to the next.

    mean, cv: the score's mean and coefficient of variation over an image's tokens (averaged over images);
    top25_mass / top50_mass: share of an image's total (clipped) score held by its best 25% / 50% of tokens;
    rank_corr_next: Spearman correlation of an image's token ranking with the next site's (same grid only).
    """
    acc: Dict[str, Dict[str, float]] = {}
    order: List[str] = []
    images = 0
    for x in batches:
        rows = site_scores(model, x, sites)
        images += x.shape[0]
        for i, r in enumerate(rows):
            s = _patch_scores(r)
            a = acc.setdefault(r.site, {"mean": 0.0, "cv": 0.0, "top25_mass": 0.0, "top50_mass": 0.0,
                                        "rank_corr_next": 0.0, "tokens": r.positions.shape[1], "n_corr": 0})
            if r.site not in order:
                order.append(r.site)
            a["mean"] += float(s.mean(dim=1).sum())
            a["cv"] += float((s.std(dim=1) / s.mean(dim=1).abs().clamp_min(1e-12)).sum())
            a["top25_mass"] += float(_top_mass(s, 0.25).sum())
            a["top50_mass"] += float(_top_mass(s, 0.5).sum())
            if i + 1 < len(rows) and rows[i + 1].length == r.length:
                prev, nxt = _common_scores(r, rows[i + 1])
                a["rank_corr_next"] += float(_spearman(prev, nxt).sum())
                a["n_corr"] += x.shape[0]
        if progress is not None:
            progress(x.shape[0])
    out = []
    for site in order:
        a = acc[site]
        corr = a["rank_corr_next"] / a["n_corr"] if a["n_corr"] else None
        out.append({"site": site, "tokens": int(a["tokens"]), "mean": a["mean"] / images, "cv": a["cv"] / images,
                    "top25_mass": a["top25_mass"] / images, "top50_mass": a["top50_mass"] / images,
                    "rank_corr_next": corr})
    return out


def _patch_scores(r: SiteScores) -> Tensor:
    """(b, P) scores of the patch tokens present, in position order (protected tokens dropped)."""
    keep = patch_index(r.positions, r.protected) >= 0
    return r.scores[keep].view(r.scores.shape[0], -1).double()


def _common_scores(r: SiteScores, nxt: SiteScores) -> Tuple[Tensor, Tensor]:
    """Scores at both sites of the patch tokens present at the later one (a subset of the earlier one's)."""
    at = torch.searchsorted(r.positions.contiguous(), nxt.positions.contiguous())
    prev = r.scores.gather(1, at)
    keep = patch_index(nxt.positions, nxt.protected) >= 0
    b = nxt.scores.shape[0]
    return prev[keep].view(b, -1).double(), nxt.scores[keep].view(b, -1).double()


def _top_mass(s: Tensor, frac: float) -> Tensor:
    pos = s.clamp_min(0)
    k = max(1, int(round(s.shape[1] * frac)))
    return pos.topk(k, dim=1).values.sum(dim=1) / pos.sum(dim=1).clamp_min(1e-12)


def _spearman(a: Tensor, b: Tensor) -> Tensor:
    ra, rb = a.argsort(dim=1).argsort(dim=1).double(), b.argsort(dim=1).argsort(dim=1).double()
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    return (ra * rb).sum(dim=1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)


# ----------------------------------------------------------------------------------------------- importance.png
def colormap(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] → uint8 RGB on the ramp; NaN → dark grey."""
    t = np.clip(np.nan_to_num(v, nan=0.0), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(t).astype(int).clip(0, len(_RAMP) - 2)
    rgb = _RAMP[lo] + (t - lo)[..., None] * (_RAMP[lo + 1] - _RAMP[lo])
    rgb[np.isnan(v)] = (40, 40, 40)
    return rgb.astype(np.uint8)


def score_grid(r: SiteScores, row: int) -> np.ndarray:
    """(H, W) scores of image `row` on the site's patch grid, normalised to [0, 1]; NaN where already pruned."""
    H, W = r.grid if r.grid is not None else (1, r.length - len(r.protected))
    g = np.full(H * W, np.nan, dtype=np.float64)
    idx = patch_index(r.positions[row], r.protected)
    ok = idx >= 0
    g[idx[ok].numpy()] = r.scores[row][ok].double().numpy()
    finite = g[~np.isnan(g)]
    if finite.size:
        lo, hi = finite.min(), finite.max()
        g = (g - lo) / (hi - lo) if hi > lo else np.where(np.isnan(g), np.nan, 0.5)
    return g.reshape(H, W)


def kept_grid(r: SiteScores, row: int) -> np.ndarray:
    """(H, W) bool: patches that go on after the site."""
    H, W = r.grid if r.grid is not None else (1, r.length - len(r.protected))
    g = np.zeros(H * W, dtype=bool)
    idx = patch_index(r.kept[row], r.protected)
    g[idx[idx >= 0].numpy()] = True
    return g.reshape(H, W)


def display_images(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> List[Image.Image]:
    """Normalised model inputs (b, 3, H, W) → RGB pictures."""
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    out = []
    for img in x.detach().float().cpu():
        arr = ((img * s + m).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        out.append(Image.fromarray(arr, "RGB"))
    return out


def _cell(img: Image.Image) -> Image.Image:
    return img.resize((CELL, CELL), Image.BICUBIC)


def heat_cell(img: Image.Image, grid: np.ndarray) -> Image.Image:
    heat = Image.fromarray(colormap(grid), "RGB").resize((CELL, CELL), Image.NEAREST)
    return Image.blend(_cell(img).convert("RGB"), heat, 0.65)


def kept_cell(img: Image.Image, keep: np.ndarray) -> Image.Image:
    """The image with pruned patches darkened to a fifth of their brightness."""
    mask = Image.fromarray((keep * 255).astype(np.uint8), "L").resize((CELL, CELL), Image.NEAREST)
    base = _cell(img).convert("RGB")
    dark = Image.eval(base, lambda v: v // 5)
    return Image.composite(base, dark, mask)


def importance_figure(images: List[Image.Image], rows: List[SiteScores], title: str) -> Image.Image:
    """Rows: images; columns: input, then per prune point its scores and the tokens it keeps."""
    cols = 1 + 2 * len(rows)
    width = PAD + cols * (CELL + PAD)
    height = 2 * HEADER + PAD + len(images) * (CELL + PAD)
    fig = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(fig)
    font = ImageFont.load_default()
    draw.text((PAD, 2), title, fill="black", font=font)
    heads = ["input"]
    for r in rows:
        kept = r.kept.shape[1]
        heads += [f"scores @ {r.site}", f"kept {kept}/{r.positions.shape[1]}"]
    for c, text in enumerate(heads):
        draw.text((PAD + c * (CELL + PAD), HEADER + 2), text, fill="black", font=font)
    for i, img in enumerate(images):
        y = 2 * HEADER + PAD + i * (CELL + PAD)
        fig.paste(_cell(img).convert("RGB"), (PAD, y))
        for j, r in enumerate(rows):
            x0 = PAD + (1 + 2 * j) * (CELL + PAD)
            fig.paste(heat_cell(img, score_grid(r, i)), (x0, y))
            fig.paste(kept_cell(img, kept_grid(r, i)), (x0 + CELL + PAD, y))
    return fig


def render_importance(model: nn.Module, images: Union[Tensor, Sequence[Path]], path: Path, max_images: int = 4,
                      title: Optional[str] = None) -> Path:
    """Write importance.png for a pruned model (or a dense one: every 1/4 of its sites) over sample images.

    `images`: normalised inputs (b, 3, H, W) as the model takes them, or image files (preprocessed here)."""
    core = getattr(model, "model", model)
    mean, std = core.normalization()
    x = _as_batch(core, images, max_images)
    ref = next(model.parameters())
    x = x.to(device=ref.device, dtype=ref.dtype)
    sites = None
    if getattr(model, "spec", None) is None:
        all_sites = core.prune_sites()
        sites = sorted({all_sites[min(len(all_sites) - 1, int(f * len(all_sites)))] for f in (0.25, 0.5, 0.75)},
                       key=all_sites.index)
    rows = site_scores(model, x, sites)
    title = title or f"token importance ({_score_name(model)} score) · {getattr(core, 'family', '?')}"
    fig = importance_figure(display_images(x, mean, std), rows, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.save(path)
    return path


def _as_batch(core: nn.Module, images, max_images: int) -> Tensor:
    if isinstance(images, Tensor):
        return images[:max_images]
    from ssmprune_cli.data.images import load_image, model_input_spec

    size, mean, std = model_input_spec(core)
    paths = list(getattr(images, "paths", images))[:max_images]
    return torch.stack([load_image(Path(p), size, mean, std) for p in paths])


# ----------------------------------------------------------------------------------------------- tokens chart
def render_tokens_plot(rows: Sequence[Dict[str, Any]], path: Path, title: str = "tokens per block",
                       size: Tuple[int, int] = (720, 320), points: Optional[Sequence[str]] = None) -> Path:
    """Line chart of tokens entering each block: dense (grey) and pruned (blue), each prune point circled where
    the count drops and labelled with its name as the report names it (`points`: the schedule's sites).
    `rows`: the report's tokens_per_block entries ({"block", "site", "dense", "pruned"})."""
    fig = tokens_figure(rows, title, size, points)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.save(path)
    return path


PRUNE_MARK = (200, 40, 40)


def prune_marks(rows: Sequence[Dict[str, Any]], points: Optional[Sequence[str]] = None) -> List[Tuple[int, str]]:
    """(row index of the prune point's block, label) for every prune point: the block named by the site
    ("after block 2" is the row of block 2), so the drop is drawn between it and the next block. Without
    `points`, every drop of the pruned count within a stage, labelled with that block's site."""
    if points is not None:
        sites = [r.get("site") for r in rows]
        return [(sites.index(s), str(s)) for s in points if s in sites]
    return [(i - 1, str(rows[i - 1].get("site", rows[i - 1]["block"]))) for i in range(1, len(rows))
            if rows[i]["pruned"] < rows[i - 1]["pruned"] and rows[i]["dense"] == rows[i - 1]["dense"]]


def tokens_figure(rows: Sequence[Dict[str, Any]], title: str, size: Tuple[int, int] = (720, 320),
                  points: Optional[Sequence[str]] = None) -> Image.Image:
    W, H = size
    left, right, top, bottom = 56, 16, 28, 40
    fig = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(fig)
    font = ImageFont.load_default()
    n = len(rows)
    ymax = max(max(r["dense"], r["pruned"]) for r in rows) if rows else 1
    ymax = _nice_ceiling(ymax)

    def px(i: float, v: float) -> Tuple[float, float]:
        x = left + (i - 1) / max(n - 1, 1) * (W - left - right)
        return x, H - bottom - v / ymax * (H - top - bottom)

    draw.text((left, 6), title, fill="black", font=font)
    draw.line([(left, top), (left, H - bottom), (W - right, H - bottom)], fill="black")
    for k in range(5):  # y ticks
        v = ymax * k / 4
        _, y = px(1, v)
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.line([(left + 1, y), (W - right, y)], fill=(230, 230, 230))
        draw.text((4, y - 6), f"{v:g}", fill="black", font=font)
    step = max(1, math.ceil(n / 12))
    for i in range(1, n + 1, step):  # x ticks
        x, y = px(i, 0)
        draw.line([(x, y), (x, y + 4)], fill="black")
        draw.text((x - 4, y + 6), str(rows[i - 1]["block"]), fill="black", font=font)
    draw.text(((W - left) // 2 + left - 12, H - 14), "block", fill="black", font=font)
    for key, colour, width in (("dense", (150, 150, 150), 2), ("pruned", (40, 90, 200), 3)):
        pts = [px(i + 1, r[key]) for i, r in enumerate(rows)]
        # a step per block, the count changing halfway between two blocks, where a prune point acts
        steps = [q for a, b in zip(pts[:-1], pts[1:])
                 for q in (a, ((a[0] + b[0]) / 2, a[1]), ((a[0] + b[0]) / 2, b[1]))] + pts[-1:]
        if len(steps) > 1:
            draw.line(steps, fill=colour, width=width)
        for p in pts:
            draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colour)
    for i, label in prune_marks(rows, points):  # each prune point: the drop after its block, with its name
        if i + 1 >= n:
            continue
        x = (px(i + 1, 0)[0] + px(i + 2, 0)[0]) / 2
        y = px(1, (rows[i]["pruned"] + rows[i + 1]["pruned"]) / 2)[1]
        draw.ellipse([x - 6, y - 6, x + 6, y + 6], outline=PRUNE_MARK, width=2)
        draw.text((x + 8, y - 14), label, fill=PRUNE_MARK, font=font)
    legend = (("dense", (150, 150, 150)), ("pruned", (40, 90, 200)))
    for k, (name, colour) in enumerate(legend):
        lx = W - right - 260 + 85 * k
        draw.line([(lx, 12), (lx + 24, 12)], fill=colour, width=3)
        draw.text((lx + 30, 6), name, fill="black", font=font)
    lx = W - right - 90
    draw.ellipse([lx + 6, 6, lx + 18, 18], outline=PRUNE_MARK, width=2)
    draw.text((lx + 24, 6), "prune point", fill="black", font=font)
    return fig


def _nice_ceiling(v: float) -> float:
    """Smallest 1/2/2.5/5 × 10^k at or above v."""
    if v <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * e >= v:
            return m * e
    return 10 * e


# ----------------------------------------------------------------------------------------------- analyze --calib
def calib_importance(model: nn.Module, calib_dir: Path, images: int = 64, batch_size: int = 32,
                     device: Optional[torch.device] = None, seed: int = 0) -> Dict[str, Any]:
    """`analyze --calib`: token-importance statistics per site over up to `images` calibration images."""
    from ssmprune_cli.data.images import find_images, iter_batches, model_input_spec

    from .progress import progress_bar

    core = getattr(model, "model", model)
    found = find_images(calib_dir, limit=images, seed=seed)
    size, mean, std = model_input_spec(core)
    ref = next(model.parameters())
    device = ref.device if device is None else device
    batches = (x for x, _ in iter_batches(found, batch_size, size, mean, std, device=device, dtype=ref.dtype))
    with progress_bar("token scores", len(found)) as advance:
        rows = importance_statistics(model, batches, progress=advance)
    return {"images": len(found), "score": _score_name(model), "sites": rows}


def render_importance_stats(doc: Dict[str, Any]) -> None:
    from rich.table import Table

    from .console import results

    table = Table(title=f"token importance ({doc['score']} score, {doc['images']} images)")
    for col in ("site", "tokens", "mean", "cv", "top 25% mass", "top 50% mass", "rank corr. next"):
        table.add_column(col, justify="right")
    for r in doc["sites"]:
        corr = "-" if r["rank_corr_next"] is None else f"{r['rank_corr_next']:.3f}"
        table.add_row(r["site"], str(r["tokens"]), f"{r['mean']:.4g}", f"{r['cv']:.3f}", f"{r['top25_mass']:.1%}",
                      f"{r['top50_mass']:.1%}", corr)
    results.print(table)

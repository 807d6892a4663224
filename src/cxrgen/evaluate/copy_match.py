"""Copy matching: how close an image comes to its nearest reference image once small transformations are undone.

A copy of a training image can come back mirrored, rotated a few degrees, shifted, rescaled, re-exposed,
recompressed or noisier. Images are compared by their local detail: a band of their structure (a difference of
Gaussians, finer than the anatomy that every chest shares and coarser than pixel noise) divided by its local
contrast, so that faint texture counts as much as a strong edge, and clipped at 3. Only the central 75% of an
image is compared (the rest is room for shifts, and where the fills of rotated or shifted copies go). Two stages:

1. Retrieval (32 px, a coarser band). Every image is registered to the references' mean anatomy (the shift, to a
   fraction of a pixel, at which its central window best matches the mean), so that a shifted copy and its
   source land in the same frame. A query, as it is and mirrored, unzoomed by 0.95..1.34 and unrotated by -3, 0
   and 3 degrees (24 variants), each registered, is compared with every reference by block-wise matrix products
   (memory stays flat) in the directions that tell images apart: the references' principal components after
   the first ones (the anatomy all chests share). The `candidates` best references are kept, each with the
   variant and the shift between the two registrations.
2. Alignment (64 px). The query is warped over rotations within 3 degrees (1.5-degree steps, -6..6 in all) and
   zooms within 5% (5% steps, 0.91..1.41 in all) of the retrieved variant, and slid over each candidate within
   2 px of the registered shift; the best pair is then refined on a finer grid (0.75 degree, 2.5%, half a
   pixel). A query's similarity is the best Pearson correlation found; the transformation that gave it is kept.

Independent images also gain from this search (anatomy lines up), so thresholds must come from the same search
between images known to be independent (see memorization.py).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

WORK = 128  # images are held at this size while described
FINE, COARSE = 64, 32  # the grids of alignment and retrieval
FINE_BAND = (0.7, 3.0, 6.0)  # difference-of-Gaussians sigmas and the local-contrast sigma, in WORK pixels
COARSE_BAND = (2.0, 8.0, 12.0)
FLOOR = 0.5  # the local contrast's floor, a share of the image's median contrast
ROTATIONS = tuple(1.5 * k for k in range(-4, 5))  # degrees, -6 .. 6
ZOOMS = tuple(1.05**k for k in range(-2, 8))  # how much larger the query shows the reference: 0.91 .. 1.41
RETRIEVAL_ROTATIONS = (2, 4, 6)  # indices into ROTATIONS (-3, 0, 3 degrees); alignment searches each +-2 steps
RETRIEVAL_ZOOMS = (1, 3, 5, 8)  # indices into ZOOMS (0.95, 1.05, 1.16, 1.34); alignment searches each +-1 step
ANATOMY = (24, 160)  # retrieval drops the references' first principal components, keeps those up to the second
SEARCH = 2  # FINE pixels around the registered shift, each axis
POLISH = ((-0.75, 0.0, 0.75), (1 / 1.025, 1.0, 1.025))  # the finer grid around a query's best pair
CANDIDATES = 8
COARSE_KEEP, FINE_KEEP = COARSE * 3 // 4, FINE * 3 // 4  # the central windows compared
FINE_ROOM = (FINE - FINE_KEEP) // 2


@dataclass
class Described:
    """Detail maps of a set of images: coarse (N, COARSE, COARSE) for retrieval, fine (N, FINE, FINE) for
    alignment (float16: the index of a large training set stays small)."""

    coarse: torch.Tensor
    fine: torch.Tensor

    def __len__(self) -> int:
        return len(self.fine)

    def subset(self, rows: np.ndarray) -> Described:
        index = torch.as_tensor(rows, dtype=torch.long)
        return Described(self.coarse[index], self.fine[index])


@dataclass
class Transform:
    """How a query shows its reference: mirrored, then rotated (degrees, counter-clockwise as displayed), enlarged
    by `zoom`, and moved by (right, down) as shares of the side."""

    mirrored: bool
    rotation: float
    zoom: float
    right: float
    down: float

    def name(self) -> str:
        parts = ["mirrored"] if self.mirrored else []
        if self.rotation:
            parts.append(f"rotated {self.rotation:+g}°")
        if abs(self.zoom - 1.0) > 0.01:
            parts.append(f"scaled {self.zoom:.0%}")
        if self.right or self.down:
            parts.append(f"shifted {self.right:+.0%} right, {self.down:+.0%} down")
        return ", ".join(parts) or "as is"


@dataclass
class Match:
    """Each query's nearest reference: similarity (-inf when it had no reference to compare with), index and
    the transformation that matched."""

    score: np.ndarray
    index: np.ndarray
    transform: list[Transform]


def square(gray: np.ndarray, size: int = WORK) -> np.ndarray:
    """The centred square of an image, resized to size x size: averaged down (box filter), or interpolated up
    (bicubic: a box filter would copy pixels in a pattern that shifts with the content)."""
    h, w = gray.shape
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    resample = Image.Resampling.BOX if side >= size else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(gray[y : y + side, x : x + side]).resize((size, size), resample))


def detail(held: np.ndarray, band: tuple[float, float, float]) -> np.ndarray:
    """A band of the image's structure divided by its local contrast, clipped at 3. The contrast has a floor of
    half the image's median contrast (and of half a grey level), so that flat regions, where noise is all there
    is, do not count as much as structure."""
    fine, coarse, local = band
    pixels = held.astype(np.float32)
    d = gaussian_filter(pixels, fine) - gaussian_filter(pixels, coarse)
    energy = gaussian_filter(d * d, local)
    floor = max(0.25, FLOOR**2 * float(np.median(energy)))
    return np.clip(d / np.sqrt(energy + floor), -3.0, 3.0)


def describe_image(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    held = square(gray)
    coarse = detail(held, COARSE_BAND).reshape(COARSE, WORK // COARSE, COARSE, WORK // COARSE).mean((1, 3))
    fine = detail(held, FINE_BAND).reshape(FINE, WORK // FINE, FINE, WORK // FINE).mean((1, 3))
    return coarse, fine


def describe(
    load: Callable[[int], np.ndarray], indices: np.ndarray | range, workers: int = 4, desc: str = "describing"
) -> Described:
    """Detail maps of the images `load(i)` for i in indices (8-bit grayscale of any size)."""
    coarse = np.zeros((len(indices), COARSE, COARSE), np.float32)
    fine = np.zeros((len(indices), FINE, FINE), np.float16)
    with ThreadPoolExecutor(workers) as pool:
        done = pool.map(lambda i: describe_image(load(int(i))), indices)
        for k, (c, f) in enumerate(tqdm(done, total=len(indices), desc=desc, unit="img", dynamic_ncols=True)):
            coarse[k], fine[k] = c, f
    return Described(torch.from_numpy(coarse), torch.from_numpy(fine))


def _affine(mirrored: torch.Tensor, zoom: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Affine matrices (M, 2, 3) that sample a query at zoom * R * M (x, y) for each output point: the warped query
    shows the reference as it is when the query shows it mirrored (M), rotated and enlarged by zoom."""
    a = torch.deg2rad(degrees.double())
    cos, sin = torch.cos(a) * zoom, torch.sin(a) * zoom
    flip = torch.where(mirrored, -1.0, 1.0).double()
    zero = torch.zeros_like(cos)
    rows = [torch.stack([cos * flip, sin, zero], -1), torch.stack([-sin * flip, cos, zero], -1)]
    return torch.stack(rows, dim=-2).float()


def _thetas(mirrors: tuple[bool, ...], zooms: tuple[float, ...], rotations: tuple[float, ...]) -> torch.Tensor:
    """_affine over every combination, mirror-major, then zoom, then rotation."""
    grid = [(m, z, r) for m in mirrors for z in zooms for r in rotations]
    m, z, r = (torch.tensor(column, dtype=torch.float64) for column in zip(*grid, strict=True))
    return _affine(m.bool(), z, r)


def _points(thetas: torch.Tensor, side: int, keep: int) -> torch.Tensor:
    """Where each theta (..., 2, 3) samples the central keep x keep of a side x side output, in grid_sample's
    normalised coordinates (align_corners=False): (..., keep, keep, 2)."""
    centres = (torch.arange(keep, dtype=torch.float32) + (side - keep) / 2 + 0.5) * (2.0 / side) - 1.0
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    base = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (K, K, 3)
    return torch.einsum("ijc,...dc->...ijd", base, thetas)


def _grid(thetas: torch.Tensor, side: int, keep: int) -> torch.Tensor:
    """Sampling points of each theta (T, 2, 3) stacked along the height: (1, T * keep, keep, 2), so that one
    grid_sample call warps a whole batch held as channels."""
    return _points(thetas, side, keep).reshape(1, len(thetas) * keep, keep, 2).contiguous()


def _warp(maps: torch.Tensor, grid: torch.Tensor, keep: int) -> torch.Tensor:
    """(B, S, S) maps sampled at a stacked grid (_grid): (B, T, keep, keep)."""
    warped = F.grid_sample(maps[None], grid, align_corners=False)[0]  # the batch as channels: (B, T * keep, keep)
    return warped.reshape(len(maps), -1, keep, keep)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows of x (..., D) with zero mean and unit norm: dot products are Pearson correlations."""
    x = x - x.mean(-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6)


def _spread(regions: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and centred norm of every keep x keep window of regions (P, S, S), from integral images: (P, n, n) each."""
    integral = F.pad(torch.stack([regions, regions.square()]).cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    sums = integral[..., keep:, keep:] - integral[..., :-keep, keep:] - integral[..., keep:, :-keep]
    sums = sums + integral[..., :-keep, :-keep]
    return sums[0], (sums[1] - sums[0].square() / keep**2).clamp(min=1e-12).sqrt()


def _slide(templates: torch.Tensor, regions: torch.Tensor, mean: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each template (P, T, K*K) with every K x K window of its region (P, S, S), given the
    templates' means and centred norms (P, T): (P, T * n * n), n = S - K + 1, ordered (template, dy, dx). Sums
    of products come from one grouped convolution (each region a channel), the windows' own sums from integral
    images, so that no window is copied."""
    p, t = templates.shape[:2]
    keep = int(round(templates.shape[-1] ** 0.5))
    weights = templates.reshape(p * t, 1, keep, keep)
    n = regions.shape[-1] - keep + 1
    raw = F.conv2d(regions[None], weights, groups=p)[0].reshape(p, t, n, n)
    total, spread = _spread(regions, keep)
    centred = raw - mean[..., None, None] * total[:, None]  # the sum of (t - mean t) * w
    return (centred / (norm[..., None, None] * spread[:, None])).flatten(1)


def _moments(templates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and centred norm of each template (..., D)."""
    mean = templates.mean(-1)
    sq = torch.linalg.vector_norm(templates, dim=-1).square()
    return mean, (sq - templates.shape[-1] * mean.square()).clamp(min=1e-12).sqrt()


def _register(maps: torch.Tensor, atlas: torch.Tensor) -> torch.Tensor:
    """Where the atlas window (K x K, flattened) matches best in each map (M, S, S): (M, 2) offsets (y, x) of that
    window from the map's centre, in pixels, refined between pixels by a parabola through the neighbours."""
    m, side = maps.shape[0], maps.shape[-1]
    keep = int(round(atlas.numel() ** 0.5))
    n = side - keep + 1
    raw = F.conv2d(maps[:, None], atlas.reshape(1, 1, keep, keep))[:, 0]  # atlas: zero mean, so raw is centred
    corr = raw / _spread(maps, keep)[1]  # (M, n, n)
    at = corr.flatten(1).argmax(1)
    peak = torch.stack([at // n, at % n], dim=1)  # (M, 2)
    rows = torch.arange(m)
    out = peak.float() - (n - 1) / 2
    for axis in (0, 1):
        step = torch.zeros(2, dtype=torch.long)
        step[axis] = 1
        before, after = (peak - step).clamp(0, n - 1), (peak + step).clamp(0, n - 1)
        a, c, b = (corr[rows, q[:, 0], q[:, 1]] for q in (before, peak, after))
        curve = a - 2 * c + b
        inside = (peak[:, axis] > 0) & (peak[:, axis] < n - 1) & (curve < 0)
        out[:, axis] += torch.where(inside, (0.5 * (a - b) / curve.where(inside, -1.0)).clamp(-0.5, 0.5), 0.0)
    return out


def _windows_at(maps: torch.Tensor, thetas: torch.Tensor, keep: int) -> torch.Tensor:
    """The central keep x keep window of each map (B, S, S) sampled through each of its thetas (B, T, 2, 3):
    (B, T, K*K). The T grids are stacked along the height, so the maps are never copied."""
    b, t = thetas.shape[:2]
    grid = _points(thetas, maps.shape[-1], keep).reshape(b, t * keep, keep, 2)
    return F.grid_sample(maps[:, None], grid, align_corners=False).reshape(b, t, keep * keep)


def _shifted(thetas: torch.Tensor, offsets: torch.Tensor, side: int) -> torch.Tensor:
    """thetas (M, 2, 3) followed by a move of the output by offsets (M, 2) pixels (y, x): sampling at A (u + s)."""
    moved = thetas.clone()
    s = torch.stack([offsets[:, 1], offsets[:, 0]], dim=1) * (2.0 / side)  # normalised (x, y)
    moved[:, :, 2] += (thetas[:, :, :2] @ s[:, :, None])[:, :, 0]
    return moved


RETRIEVAL_THETAS = _thetas(  # index (mirror * zooms + zoom) * rotations + rotation, as the alignment grid's
    (False, True), tuple(ZOOMS[i] for i in RETRIEVAL_ZOOMS), tuple(ROTATIONS[i] for i in RETRIEVAL_ROTATIONS)
)
RETRIEVAL_GRID = _grid(RETRIEVAL_THETAS, COARSE, COARSE)
ALIGNMENT_GRID = _grid(_thetas((False, True), ZOOMS, ROTATIONS), FINE, FINE_KEEP)
IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


class CopyIndex:
    """Reference images (a training set) to match queries against."""

    def __init__(self, references: Described):
        self.fine = references.fine
        n = len(references)
        lo = (COARSE - COARSE_KEEP) // 2
        mean = references.coarse.mean(0)
        self.atlas = _unit(mean[lo : lo + COARSE_KEEP, lo : lo + COARSE_KEEP].reshape(-1))  # the mean anatomy
        self.offsets = _register(references.coarse, self.atlas)  # (N, 2): where each reference's anatomy sits
        thetas = _shifted(IDENTITY.expand(n, 2, 3), self.offsets, COARSE)
        windows = _unit(_windows_at(references.coarse, thetas[:, None], COARSE_KEEP)[:, 0])
        self.mean = torch.zeros(windows.shape[1])
        self.basis: torch.Tensor | None = None  # (D, d): the directions retrieval compares in
        if n >= 16:  # enough references to tell the anatomy they share from what sets each apart
            self.mean = windows.mean(0)
            drop, upto = min(ANATOMY[0], n // 8), min(ANATOMY[1], n - 1)
            centred = windows - self.mean
            _, vectors = torch.linalg.eigh(centred.T @ centred)  # principal directions, ascending variance
            self.basis = vectors.flip(1)[:, drop:upto].contiguous()
        self.coarse = self._project(windows).T.contiguous()  # (d, N)

    def _project(self, windows: torch.Tensor) -> torch.Tensor:
        x = windows - self.mean
        if self.basis is not None:
            x = x @ self.basis
        return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6)

    def __len__(self) -> int:
        return self.fine.shape[0]

    def match(
        self,
        queries: Described,
        query_groups: np.ndarray | None = None,
        groups: np.ndarray | None = None,
        candidates: int = CANDIDATES,
        block: int = 64,
        chunk: int = 4096,
        desc: str = "matching",
    ) -> Match:
        """Each query's nearest reference. With groups, a query is never matched with a reference of its own
        group (query_groups[i] == groups[j]: the same patient)."""
        q = len(queries)
        score = np.full(q, -np.inf, np.float32)
        index = np.zeros(q, np.int64)
        transform = [Transform(False, 0.0, 1.0, 0.0, 0.0) for _ in range(q)]
        with torch.inference_mode():
            for lo in tqdm(range(0, q, block), desc=desc, unit="block", dynamic_ncols=True, disable=q <= block):
                rows = np.arange(lo, min(lo + block, q))
                mask = None if groups is None or query_groups is None else query_groups[rows][:, None] == groups
                found = self._retrieve(queries.coarse[rows], mask, candidates, chunk)
                for k, (s, j, t) in enumerate(zip(*self._align(queries.fine[rows].float(), *found), strict=True)):
                    score[lo + k], index[lo + k], transform[lo + k] = s, j, t
        return Match(score, index, transform)

    def _retrieve(
        self, coarse: torch.Tensor, mask: np.ndarray | None, candidates: int, chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The best references of each query: (B, k) indices, retrieval scores and variants, and (B, k, 2) the
        shift (COARSE px) at which the variant shows the reference."""
        b, v = len(coarse), len(RETRIEVAL_THETAS)
        warped = _warp(coarse, RETRIEVAL_GRID, COARSE).flatten(0, 1)  # (B*V, S, S)
        offsets = _register(warped, self.atlas)  # (B*V, 2)
        thetas = _shifted(RETRIEVAL_THETAS.repeat(b, 1, 1), offsets, COARSE).reshape(b, v, 2, 3)
        vectors = self._project(_unit(_windows_at(coarse, thetas, COARSE_KEEP)))  # (B, V, d)
        k = min(candidates, len(self))
        best = torch.full((b, k), -torch.inf)
        where = torch.zeros((b, k), dtype=torch.long)
        variant = torch.zeros((b, k), dtype=torch.long)
        for lo in range(0, len(self), chunk):
            hi = min(lo + chunk, len(self))
            sims = (vectors.reshape(b * v, -1) @ self.coarse[:, lo:hi]).reshape(b, v, hi - lo).max(dim=1)
            top = sims.values
            if mask is not None:
                top = top.masked_fill(torch.from_numpy(mask[:, lo:hi]), -torch.inf)
            merged = torch.cat([best, top], dim=1)
            ids = torch.cat([where, torch.arange(lo, hi).expand(b, -1)], dim=1)
            kinds = torch.cat([variant, sims.indices], dim=1)
            best, pick = merged.topk(k, dim=1)
            where, variant = ids.gather(1, pick), kinds.gather(1, pick)
        shift = offsets.reshape(b, v, 2)[torch.arange(b)[:, None], variant] - self.offsets[where]
        return where, best, variant, shift

    def _align(
        self,
        fine: torch.Tensor,
        where: torch.Tensor,
        retrieved: torch.Tensor,
        variant: torch.Tensor,
        shift: torch.Tensor,
    ) -> tuple[list[float], list[int], list[Transform]]:
        """The best correlation of each query over its candidates, transformations and shifts."""
        b, k = where.shape
        nz, nr = len(ZOOMS), len(ROTATIONS)
        bank = _warp(fine, ALIGNMENT_GRID, FINE_KEEP).flatten(2)  # (B, T, D)
        rotation = torch.as_tensor(RETRIEVAL_ROTATIONS)[variant % len(RETRIEVAL_ROTATIONS)]
        zoom = torch.as_tensor(RETRIEVAL_ZOOMS)[variant // len(RETRIEVAL_ROTATIONS) % len(RETRIEVAL_ZOOMS)]
        mirror = variant // (len(RETRIEVAL_ROTATIONS) * len(RETRIEVAL_ZOOMS))
        zooms = (zoom[..., None] + torch.tensor([-1, 0, 1])).clamp(0, nz - 1)  # (B, k, 3)
        rotations = (rotation[..., None] + torch.arange(-2, 3)).clamp(0, nr - 1)  # (B, k, 5)
        tried = ((mirror[..., None] * nz + zooms)[..., None] * nr + rotations[..., None, :]).reshape(b, k, -1)
        rows = torch.arange(b)[:, None, None]
        templates = bank.flatten(0, 1).index_select(0, (rows * bank.shape[1] + tried).reshape(-1))
        templates = templates.reshape(b * k, tried.shape[2], -1)
        # The warped query shows the reference moved by `shift`: the reference's matching window sits that far
        # the other way from its centre.
        centre = (-shift * (FINE / COARSE)).round().long()
        start = (centre - SEARCH).clamp(-FINE_ROOM, FINE_ROOM - 2 * SEARCH) + FINE_ROOM
        span = FINE_KEEP + 2 * SEARCH
        refs = self.fine[where.reshape(-1)]
        corners = start.reshape(-1, 2).tolist()
        regions = torch.stack([r[y : y + span, x : x + span] for r, (y, x) in zip(refs, corners, strict=True)]).float()
        corr = _slide(templates, regions, *_moments(templates))
        corr = corr.reshape(b, k, -1).masked_fill(~torch.isfinite(retrieved)[..., None], -torch.inf)
        flat = corr.reshape(b, -1).max(dim=1)
        found = []  # per query: its best reference, the transformation and the window's offset from centre
        width = 2 * SEARCH + 1
        for row in range(b):
            c, rest = divmod(int(flat.indices[row]), corr.shape[2])
            t, s = divmod(rest, width * width)
            m, rest = divmod(int(tried[row, c, t]), nz * nr)
            z, r = divmod(rest, nr)
            y0, x0 = (int(v) - FINE_ROOM for v in start[row, c])  # where the searched windows begin, from centre
            found.append((int(where[row, c]), Transform(bool(m), ROTATIONS[r], ZOOMS[z], 0.0, 0.0), (y0, x0), s))
        offsets = [(y0 + s // width, x0 + s % width) for _, _, (y0, x0), s in found]
        return self._polish(fine, flat.values, [f[0] for f in found], [f[1] for f in found], offsets)

    def _polish(
        self,
        fine: torch.Tensor,
        scores: torch.Tensor,
        indices: list[int],
        transforms: list[Transform],
        offsets: list[tuple[int, int]],
    ) -> tuple[list[float], list[int], list[Transform]]:
        """Each query's best pair once more on a finer grid around what was found: rotations within 0.75 degrees,
        zooms within 2.5%, shifts of half a pixel."""
        b = len(indices)
        steps = torch.tensor(
            [(dr, dz, sy, sx) for dr in POLISH[0] for dz in POLISH[1] for sy in (0.0, 0.5) for sx in (0.0, 0.5)]
        )
        n = len(steps)
        mirrored = torch.tensor([t.mirrored for t in transforms]).repeat_interleave(n)
        zoom = torch.tensor([t.zoom for t in transforms]).repeat_interleave(n) * steps[:, 1].repeat(b)
        rotation = torch.tensor([t.rotation for t in transforms]).repeat_interleave(n) + steps[:, 0].repeat(b)
        thetas = _shifted(_affine(mirrored, zoom.double(), rotation.double()), steps[:, 2:].repeat(b, 1), FINE)
        templates = _windows_at(fine, thetas.reshape(b, n, 2, 3), FINE_KEEP)
        span = FINE_KEEP + 2
        corners = [
            (min(max(FINE_ROOM + y - 1, 0), FINE - span), min(max(FINE_ROOM + x - 1, 0), FINE - span))
            for y, x in offsets
        ]
        regions = torch.stack(
            [self.fine[j, y : y + span, x : x + span] for j, (y, x) in zip(indices, corners, strict=True)]
        ).float()
        corr = _slide(templates, regions, *_moments(templates)).reshape(b, n * 9)
        top = corr.max(dim=1)
        out_scores, out_transforms = [], []
        for row in range(b):
            t, value = transforms[row], float(top.values[row])
            if value > scores[row] > -np.inf:  # (a query with no reference to compare with keeps -inf)
                k, at = divmod(int(top.indices[row]), 9)
                dr, dz, sy, sx = steps[k].tolist()
                y, x = corners[row][0] - FINE_ROOM + at // 3, corners[row][1] - FINE_ROOM + at % 3
            else:
                (dr, dz, sy, sx), (y, x), value = (0.0, 1.0, 0.0, 0.0), offsets[row], float(scores[row])
            moved = (-(x - sx) / FINE, -(y - sy) / FINE)  # the query shows the reference moved back by that
            out_transforms.append(Transform(t.mirrored, t.rotation + dr, t.zoom * dz, *moved))
            out_scores.append(min(value, 1.0))
        return out_scores, indices, out_transforms

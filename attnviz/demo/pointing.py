"""Does a map point at the right object? The pointing game, energy-in-box, and a full check of
DemoNet's own (native) attention, read through forward hooks.

Geometry: a map of ``h × w`` cells over an ``S × S`` image (``S`` divisible or not) puts the
centre of cell ``(i, j)`` (row ``i``, column ``j``) at image pixel coordinates
``x = (j + 0.5) · S / w``, ``y = (i + 0.5) · S / h`` (continuous coordinates: pixel ``k``
covers ``[k, k+1)``). A box ``(x0, y0, x1, y1)`` (``x1``/``y1`` exclusive pixel indices, see
:mod:`attnviz.demo.world`) is the closed rectangle ``[x0, x1] × [y0, y1]`` in those coordinates.
The pointing game scores a hit when the map's argmax cell centre (first maximum in row-major
order on ties) lies inside the box, widened by ``tolerance`` pixels on every side.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import (CROSS_ATTN, SE_GATE, SE_MODULE, SELF_ATTN, SPATIAL_GATE, DemoNet,
                    caption_ids, preprocess)
from .world import Scene, category_index, hard_negative_captions, make_scenes, parse_caption

__all__ = [
    "HELDOUT_SEED", "Box", "cell_centre", "argmax_cell", "pointing_hit", "pointing_hit_any",
    "energy_in_box", "chance_rate", "spearman", "mha_weights", "AttentionRecorder",
    "native_maps", "randomised_copy", "PointingReport", "evaluate_model", "KINDS", "TARGETS",
]

#: Seed of the held-out scenes (never used in training; training draws from seed [s, 1]).
HELDOUT_SEED = 20_240_601
#: Kinds evaluated, and what the map must point at.
KINDS = {
    "cross": "the named object",
    "spatial": "any object",
    "mixed-serial": "any object",
    "self": "any object",
    "channel": "any object",
}
#: Pointing-game targets from the issue (the others are reported only).
TARGETS = {"cross": 0.9, "spatial": 0.9}

Box = tuple[float, float, float, float]


# --------------------------------------------------------------------------- geometry

def cell_centre(i: int, j: int, shape: tuple[int, int], image_size: int | tuple[int, int]) -> tuple[float, float]:
    """Image coordinates ``(x, y)`` of the centre of map cell (row i, column j)."""
    h, w = shape
    ih, iw = (image_size, image_size) if isinstance(image_size, int) else image_size
    return (j + 0.5) * iw / w, (i + 0.5) * ih / h


def argmax_cell(m: np.ndarray) -> tuple[int, int]:
    """(row, column) of the map's maximum (first one in row-major order)."""
    m = np.asarray(m)
    if m.ndim != 2:
        raise ValueError(f"a map must be (H, W), got shape {m.shape}")
    if not np.isfinite(m).any():
        raise ValueError("the map has no finite value")
    flat = np.where(np.isfinite(m), m, -np.inf).ravel()
    i, j = divmod(int(np.argmax(flat)), m.shape[1])
    return i, j


def _inside(x: float, y: float, box: Sequence[float], tol: float) -> bool:
    x0, y0, x1, y1 = box
    return (x0 - tol) <= x <= (x1 + tol) and (y0 - tol) <= y <= (y1 + tol)


def pointing_hit(m: np.ndarray, box: Sequence[float], image_size: int | tuple[int, int],
                 tolerance: float = 0.0) -> bool:
    """True when the argmax of map ``m`` (H×W, feature resolution) falls inside ``box``."""
    i, j = argmax_cell(m)
    x, y = cell_centre(i, j, m.shape, image_size)
    return _inside(x, y, box, tolerance)


def pointing_hit_any(m: np.ndarray, boxes: Sequence[Sequence[float]],
                     image_size: int | tuple[int, int], tolerance: float = 0.0) -> bool:
    """True when the argmax of ``m`` falls inside any of ``boxes``."""
    i, j = argmax_cell(m)
    x, y = cell_centre(i, j, m.shape, image_size)
    return any(_inside(x, y, b, tolerance) for b in boxes)


def energy_in_box(m: np.ndarray, boxes: Sequence[Sequence[float]] | Sequence[float],
                  image_size: int) -> float:
    """Share of the map's mass (shifted to be ≥ 0 by its minimum, bilinearly upsampled to
    the image) that falls inside the union of the boxes (integer pixel boxes)."""
    if len(boxes) and not isinstance(boxes[0], (tuple, list, np.ndarray)):
        boxes = [boxes]  # one box
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    up = F.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False)[0, 0].numpy()
    up = up - up.min()
    total = float(up.sum())
    if total <= 0:
        return 0.0
    sel = np.zeros(up.shape, bool)
    for x0, y0, x1, y1 in boxes:
        sel[int(y0):int(y1), int(x0):int(x1)] = True
    return float(up[sel].sum() / total)


def chance_rate(shape: tuple[int, int], boxes: Sequence[Sequence[float]], image_size: int,
                tolerance: float = 0.0) -> float:
    """Hit rate of a uniformly random cell: share of cell centres inside any box."""
    h, w = shape
    ys = (np.arange(h) + 0.5) * image_size / h
    xs = (np.arange(w) + 0.5) * image_size / w
    inside = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        iy = (ys >= y0 - tolerance) & (ys <= y1 + tolerance)
        ix = (xs >= x0 - tolerance) & (xs <= x1 + tolerance)
        inside |= iy[:, None] & ix[None, :]
    return float(inside.mean())


def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their ranks)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return sums[inv] / counts[inv]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (flattened); 0 when either is constant."""
    ra, rb = _rank(np.ravel(a).astype(np.float64)), _rank(np.ravel(b).astype(np.float64))
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else 0.0


# --------------------------------------------------------------------------- hooks

def mha_weights(mha: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-head attention weights (B, heads, L, S) exactly as ``mha`` computes them (what
    ``need_weights=True, average_attn_weights=False`` returns), from its own projections."""
    if mha.bias_k is not None or mha.add_zero_attn:
        raise ValueError("add_bias_kv / add_zero_attn are not supported")
    e, h = mha.embed_dim, mha.num_heads
    hd = e // h
    if not mha.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    if mha._qkv_same_embed_dim:
        wq, wk = mha.in_proj_weight[:e], mha.in_proj_weight[e:2 * e]
    else:
        wq, wk = mha.q_proj_weight, mha.k_proj_weight
    b = mha.in_proj_bias
    bq, bk = (b[:e], b[e:2 * e]) if b is not None else (None, None)
    q = F.linear(query, wq, bq)
    k = F.linear(key, wk, bk)
    bsz, lq, sk = q.shape[0], q.shape[1], k.shape[1]
    q = q.view(bsz, lq, h, hd).transpose(1, 2)
    k = k.view(bsz, sk, h, hd).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / (hd ** 0.5)
    if attn_mask is not None:
        am = attn_mask if attn_mask.dtype != torch.bool else \
            torch.zeros_like(attn_mask, dtype=scores.dtype).masked_fill(attn_mask, float("-inf"))
        scores = scores + (am.view(bsz, h, lq, sk) if am.ndim == 3 else am)
    if key_padding_mask is not None:
        kpm = key_padding_mask
        if kpm.dtype == torch.bool:
            scores = scores.masked_fill(kpm[:, None, None, :], float("-inf"))
        else:
            scores = scores + kpm[:, None, None, :]
    return scores.softmax(-1)


class AttentionRecorder:
    """Forward hooks on DemoNet's attention modules; records the last call of each.

    Recorded (detached, CPU): ``features`` = SE input F (B, C, h, w); ``se`` = s (B, C);
    ``spatial`` = M (B, h, w); ``self`` = per-head class-token/all-token weights
    (B, heads, N, N); ``cross`` = per-head weights (B, heads, P, h·w). Use as a context
    manager: the hooks are removed on exit, even after an error.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.records: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> "AttentionRecorder":
        get = self.model.get_submodule
        self._handles = [
            get(SE_MODULE).register_forward_hook(self._se_input),
            get(SE_GATE).register_forward_hook(self._se_gate),
            get(SPATIAL_GATE).register_forward_hook(self._spatial),
            get(SELF_ATTN).register_forward_hook(self._mha("self"), with_kwargs=True),
            get(CROSS_ATTN).register_forward_hook(self._mha("cross"), with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _se_input(self, module, inputs, output):
        self.records["features"] = inputs[0].detach().float().cpu()

    def _se_gate(self, module, inputs, output):
        self.records["se"] = output.detach().float().flatten(1).cpu()

    def _spatial(self, module, inputs, output):
        self.records["spatial"] = output.detach().float()[:, 0].cpu()

    def _mha(self, name: str):
        def hook(module, args, kwargs, output):
            query = args[0] if len(args) > 0 else kwargs["query"]
            key = args[1] if len(args) > 1 else kwargs["key"]
            with torch.no_grad():
                w = mha_weights(module, query.detach(), key.detach(),
                                kwargs.get("key_padding_mask"), kwargs.get("attn_mask"))
            self.records[name] = w.float().cpu()
        return hook


def native_maps(model: DemoNet, images: torch.Tensor, text_ids: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Every kind's map for a batch, read natively from ``model``'s modules.

    Returns float32 arrays: ``spatial`` and ``mixed-serial`` (B, 24, 24) — in a serial CBAM
    the spatial gate already acts on the SE-scaled features, so the two are the same map;
    ``channel`` (B, 24, 24) = Σ_c s_c F_c; ``se`` (B, C); ``self`` (B, 12, 12) = class-token
    attention, mean over heads; ``cross`` (B, P, 24, 24) = each caption's attention, mean
    over heads (P = all categories' captions when ``text_ids`` is None); and the model's
    outputs ``presence`` (B, n_cat) and ``match`` (B, P) logits.
    """
    if text_ids is None:
        text_ids = caption_ids()
    with torch.no_grad(), AttentionRecorder(model) as rec:
        presence, match = model.forward_all(images, text_ids)
    r = rec.records
    gh, gw = model.gate_grid
    sh, sw = model.self_grid
    feats, s = r["features"], r["se"]
    channel = (s[:, :, None, None] * feats).sum(1)
    self_cls = r["self"].mean(1)[:, 0, model.self_prefix:].reshape(-1, sh, sw)
    cross = r["cross"].mean(1).reshape(r["cross"].shape[0], -1, gh, gw)
    spatial = r["spatial"].numpy()
    return {
        "spatial": spatial,
        "mixed-serial": spatial.copy(),
        "channel": channel.numpy(),
        "se": s.numpy(),
        "self": self_cls.numpy(),
        "cross": cross.numpy(),
        "presence": presence.numpy(),
        "match": match.numpy(),
    }


def randomised_copy(model: DemoNet, calibration: torch.Tensor | None = None, seed: int = 0) -> DemoNet:
    """A copy of ``model`` with every parameter re-initialised (fully randomised).

    BatchNorm running statistics are reset and, when ``calibration`` images are given,
    re-estimated on them (train mode, no gradient) so the random model is not degenerate.
    """
    torch.manual_seed(seed)
    rnd = copy.deepcopy(model)
    for m in rnd.modules():
        if isinstance(m, nn.MultiheadAttention):
            m._reset_parameters()
        elif hasattr(m, "reset_parameters") and m is not rnd:
            m.reset_parameters()
    with torch.no_grad():
        rnd.cls_token.normal_(0, 0.02)
        rnd.pos_embed.normal_(0, 0.02)
    if calibration is not None:
        bns = [m for m in rnd.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        rnd.train()
        with torch.no_grad():
            rnd(calibration)
        for m, mom in zip(bns, saved):
            m.momentum = mom
    return rnd.eval()


# --------------------------------------------------------------------------- evaluation

@dataclass
class PointingReport:
    """Held-out pointing figures; ``pointing[kind]`` is the hit rate in [0, 1]."""

    n_scenes: int
    seed: int
    pointing: dict[str, float]
    energy: dict[str, float]
    chance: dict[str, float]
    n_trials: dict[str, int]
    presence_exact: float           # scenes whose whole set of categories is predicted right
    presence_label_acc: float       # per (scene, category) accuracy
    caption_acc: float              # caption presence, over present + hard-negative captions
    sanity: dict[str, float] = field(default_factory=dict)   # mean over random copies of |mean Spearman|
    sanity_per_seed: dict[str, list[float]] = field(default_factory=dict)  # signed, per random copy

    def passed(self) -> bool:
        ok = all(self.pointing[k] >= t for k, t in TARGETS.items())
        return ok and all(abs(v) < 0.3 for v in self.sanity.values())

    def table(self) -> str:
        lines = ["| kind | points at | pointing game | energy in box | chance | trials | "
                 "rank corr. vs random model: mean abs (per copy) |",
                 "|---|---|---|---|---|---|---|"]
        for k, what in KINDS.items():
            san = (f"{self.sanity[k]:.3f} ({', '.join(f'{v:+.2f}' for v in self.sanity_per_seed[k])})"
                   if k in self.sanity else "—")
            tgt = f" (target ≥ {TARGETS[k]:.2f})" if k in TARGETS else ""
            lines.append(f"| {k} | {what} | {self.pointing[k]:.3f}{tgt} | {self.energy[k]:.3f} | "
                         f"{self.chance[k]:.3f} | {self.n_trials[k]} | {san} |")
        return "\n".join(lines)


def _scene_batches(scenes: list[Scene], batch: int) -> Iterator[tuple[int, list[Scene]]]:
    for i in range(0, len(scenes), batch):
        yield i, scenes[i:i + batch]


def evaluate_model(model: DemoNet, n: int = 200, seed: int = HELDOUT_SEED, batch: int = 50,
                   sanity: bool = True, transpose: bool = False, tolerance: float = 0.0,
                   sanity_seeds: Sequence[int] = (0, 1, 2)) -> PointingReport:
    """Pointing game of every kind of ``model``'s native attention on ``n`` held-out scenes.

    cross: the map of each present object's caption must point at THAT object; the other
    kinds must point at any object. ``transpose=True`` transposes every map first (a
    deliberately wrong map, to show the check can fail). ``sanity`` adds, per kind, the
    Spearman correlation of each map with the same map from :func:`randomised_copy` (mean over
    the scenes, per random copy in ``sanity_per_seed``; ``sanity`` = mean of its absolute value
    over the ``sanity_seeds`` copies, since a random gate's sign is itself random).
    """
    was_training = model.training
    model.eval()
    scenes = make_scenes(n, seed, size=model.input_size)
    size = model.input_size
    ids = caption_ids()
    hits = {k: 0 for k in KINDS}
    trials = {k: 0 for k in KINDS}
    energy = {k: 0.0 for k in KINDS}
    chance = {k: 0.0 for k in KINDS}
    corr = {(k, rs): [] for k in KINDS for rs in sanity_seeds}
    exact = label_ok = label_n = cap_ok = cap_n = 0
    rnds: dict[int, DemoNet] = {}
    if sanity:
        calib = preprocess([s.image for s in scenes[: min(len(scenes), 64)]])
        rnds = {rs: randomised_copy(model, calib, seed=rs) for rs in sanity_seeds}
    try:
        for _, group in _scene_batches(scenes, batch):
            x = preprocess([s.image for s in group])
            maps = native_maps(model, x, ids)
            rmaps = {rs: native_maps(r, x, ids) for rs, r in rnds.items()}
            for b, scene in enumerate(group):
                boxes = [o.box for o in scene.objects]
                truth = scene.presence() > 0.5
                pred = maps["presence"][b] > 0
                exact += bool((pred == truth).all())
                label_ok += int((pred == truth).sum())
                label_n += truth.size
                for cap in [o.caption for o in scene.objects]:
                    cap_ok += bool(maps["match"][b, category_index(*parse_caption(cap))] > 0)
                    cap_n += 1
                for cap in hard_negative_captions(scene):
                    cap_ok += bool(maps["match"][b, category_index(*parse_caption(cap))] <= 0)
                    cap_n += 1
                for kind in KINDS:
                    if kind == "cross":
                        for o in scene.objects:
                            m = maps["cross"][b, o.label]
                            m = m.T if transpose else m
                            hits[kind] += pointing_hit(m, o.box, size, tolerance)
                            energy[kind] += energy_in_box(m, [o.box], size)
                            chance[kind] += chance_rate(m.shape, [o.box], size, tolerance)
                            trials[kind] += 1
                            for rs, rm in rmaps.items():
                                r = rm["cross"][b, o.label]
                                corr[kind, rs].append(spearman(m, r.T if transpose else r))
                    else:
                        m = maps[kind][b]
                        m = m.T if transpose else m
                        hits[kind] += pointing_hit_any(m, boxes, size, tolerance)
                        energy[kind] += energy_in_box(m, boxes, size)
                        chance[kind] += chance_rate(m.shape, boxes, size, tolerance)
                        trials[kind] += 1
                        for rs, rm in rmaps.items():
                            r = rm[kind][b]
                            corr[kind, rs].append(spearman(m, r.T if transpose else r))
    finally:
        model.train(was_training)
    return PointingReport(
        n_scenes=n, seed=seed,
        pointing={k: hits[k] / trials[k] for k in KINDS},
        energy={k: energy[k] / trials[k] for k in KINDS},
        chance={k: chance[k] / trials[k] for k in KINDS},
        n_trials=dict(trials),
        presence_exact=exact / n, presence_label_acc=label_ok / label_n,
        caption_acc=cap_ok / cap_n,
        sanity={k: float(np.mean([abs(np.mean(corr[k, rs])) for rs in rnds])) for k in KINDS} if rnds else {},
        sanity_per_seed={k: [float(np.mean(corr[k, rs])) for rs in rnds] for k in KINDS} if rnds else {},
    )

"""Self-attention (Q, K, V → scores → softmax → weighted values) and text-to-image cross-attention stages.

Definitions: docs/attention.md §4 and §5. Native stages recompute the scores from the inputs the
`nn.MultiheadAttention` module received and its own projection weights (its softmax is checked
against the module's weights by the tests); derived ones are the spec's formulas via attnviz.kinds.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attnviz.errors import AttnvizError
from attnviz.explain.context import Context, np32
from attnviz.explain.panels import Panel, Strip
from attnviz.kinds.cross import cross_map
from attnviz.kinds.self_attention import row_and_received
from attnviz.kinds.spatial import peak_fraction, spatial_logits
from attnviz.maps import cell_centre, query_cell
from attnviz.pipeline import Analyser

__all__ = ["MAX_ROWS", "mha_stages", "self_modules", "self_strip", "cross_modules", "cross_strip"]

MAX_ROWS = 4   # heads (self) or prompts (cross) drawn as rows; explain.json has the same panels


def _mha(analyser: Analyser, name: str) -> nn.MultiheadAttention | None:
    module = analyser.backbone.model.get_submodule(name)
    return module if isinstance(module, nn.MultiheadAttention) else None


def self_modules(analyser: Analyser) -> list[str]:
    """The last self-attention module (an nn.MultiheadAttention on a token model), and --layer."""
    names = [a.name.split("#")[0] for a in analyser.inventory.self_attention()]
    own = names[-1:] if names and analyser.backbone.tokens is not None and _mha(analyser, names[-1]) else []
    return [*own, analyser.layer]


@torch.no_grad()
def mha_stages(module: nn.MultiheadAttention, args: tuple, kwargs: dict
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores Q·Kᵀ/√d_k, their softmax and the values, per head, from the module's inputs and weights.

    Returns (B, heads, L, S), (B, heads, L, S), (B, heads, S, d_k)."""
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
    a = {**dict(zip(names, args)), **kwargs}
    if a.get("key_padding_mask") is not None or a.get("attn_mask") is not None or module.bias_k is not None \
            or module.add_zero_attn:
        raise AttnvizError("explain: attention with masks or extra key biases is not drawn step by step")
    q, k, v = (a[n].float() for n in ("query", "key", "value"))
    if q.dim() == 3 and not module.batch_first:                            # (L, B, E) -> (B, L, E)
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    if module._qkv_same_embed_dim:
        wq, wk, wv = module.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
    bq, bk, bv = module.in_proj_bias.chunk(3) if module.in_proj_bias is not None else (None, None, None)
    h = module.num_heads

    def heads(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        x = F.linear(t, w.float(), None if b is None else b.float())      # (B, N, E)
        return x.reshape(x.shape[0], x.shape[1], h, -1).transpose(1, 2)   # (B, heads, N, d_k)

    Q, K, V = heads(q, wq, bq), heads(k, wk, bk), heads(v, wv, bv)
    scores = Q @ K.transpose(-2, -1) / Q.shape[-1] ** 0.5                 # (B, heads, L, S)
    return scores, torch.softmax(scores, dim=-1), V


def _image(ctx: Context) -> np.ndarray:
    return np.asarray(ctx.image, dtype=np.uint8)


def _query(ctx: Context, grid: tuple[int, int]) -> tuple[int, int]:
    """The query cell the Analyser used: --query, else the spatial peak (as the self kind finds it)."""
    q = ctx.analyser.options.query
    if q is not None:
        return query_cell(q, ctx.image.size, grid)
    m = ctx.maps.get("spatial")
    peak = peak_fraction(torch.from_numpy(m.data)[None]) if m is not None else \
        peak_fraction(spatial_logits(ctx.features()))
    return query_cell(peak[0], (1, 1), grid)


def self_strip(ctx: Context) -> Strip:
    """One query's row of attention, step by step: per head (native) or by the derived formula."""
    m = ctx.maps.get("self-query") or ctx.map("self")
    if m.provenance == "native":
        module = _mha(ctx.analyser, m.layer)
        if module is None or m.layer not in ctx.tap.args:
            raise AttnvizError(f"explain self: {m.layer} is not an nn.MultiheadAttention; "
                               "its stages cannot be drawn (try --kind self on a ViT or the demo)")
        return _native_self(ctx, m, module)
    return _derived_self(ctx, m)


def _query_panel(ctx: Context, cell: tuple[int, int] | None, grid: tuple[int, int], what: str, prov: str, src: str) -> Panel:
    marks = [tuple(cell_centre(cell, ctx.image.size, grid))] if cell is not None else []
    return Panel("query", what, prov, src, _image(ctx), view="image", marks=marks)


def _native_self(ctx: Context, m, module: nn.MultiheadAttention) -> Strip:
    prefix, grid = ctx.bb.tokens
    scores, attn, V = mha_stages(module, ctx.tap.args[m.layer], ctx.tap.kwargs[m.layer])
    if m.name == "self-query" or not prefix:
        cell = tuple(m.meta["query_cell"]) if "query_cell" in m.meta else _query(ctx, grid)
        idx, what = prefix + cell[0] * grid[1] + cell[1], f"token of cell {cell}"
    else:
        cell, idx, what = None, 0, "the class token (reads every patch)"
    as_grid = lambda t: np32(t.reshape(grid))   # noqa: E731  (N,) patch keys -> (H, W)
    rows: list[list[Panel | None]] = []
    for h in range(min(attn.shape[1], MAX_ROWS)):
        row = attn[0, h, idx]                                              # (S,) over every key
        contrib = row[:, None] * V[0, h]                                   # (S, d_k): A[q,j]·v_j
        rows.append([_query_panel(ctx, cell, grid, what, "native", m.layer) if h == 0 else None,
                     Panel(f"head {h}: scores", "S = Q·Kᵀ/√d_k, row q", "native", m.layer,
                           as_grid(scores[0, h, idx, prefix:]), cmap="RdBu_r"),
                     Panel(f"head {h}: softmax", "A = softmax_row(S)", "native", m.layer, as_grid(row[prefix:])),
                     Panel(f"head {h}: top keys", "largest A[q, j]", "native", m.layer,
                           as_grid(row[prefix:]), view="marked"),
                     Panel(f"head {h}: weighted values", "‖A[q,j]·v_j‖  (output Σ_j A[q,j]·v_j)", "native",
                           m.layer, as_grid(contrib.norm(dim=1)[prefix:]))])
    final = Panel("the map", "mean over heads of A[q]", "native", m.layer,
                  as_grid(attn[0, :, idx, prefix:].mean(0)), view="overlay", cmap="jet")
    rows[0].append(final)
    notes = [f"{attn.shape[1] - MAX_ROWS} more heads in the map, not drawn"] if attn.shape[1] > MAX_ROWS else []
    return Strip("self", f"self-attention — native, {m.layer} ({attn.shape[1]} heads)", rows,
                 [f"head {h}" for h in range(len(rows))], finals={m.name: final}, notes=notes)


def _derived_self(ctx: Context, m) -> Strip:
    f, src = ctx.features()[0], ctx.analyser.layer                         # (C, H, W)
    grid, tau = tuple(f.shape[1:]), ctx.analyser.options.tau
    cell = tuple(m.meta["query_cell"])
    idx = cell[0] * grid[1] + cell[1]
    x = F.normalize(f.flatten(1).T, dim=1)                                 # (N, C)
    scores = (x[idx] @ x.T / tau).reshape(grid)
    row = row_and_received(f, idx, tau)[0].reshape(grid)                   # softmax of that row
    final = Panel("the map", "A[q] over the image", "derived", src, np32(row), view="overlay", cmap="jet")
    panels = [_query_panel(ctx, cell, grid, f"position of cell {cell}", "derived", src),
              Panel("scores", f"S = cos(x_q, x_j)/τ, τ = {tau:g}", "derived", src, np32(scores), cmap="RdBu_r"),
              Panel("softmax", "A = softmax_row(S)", "derived", src, np32(row)),
              Panel("top keys", "largest A[q, j]", "derived", src, np32(row), view="marked"), final]
    return Strip("self", f"self-attention — derived from {src} (Q = K = V = x̂)", [panels], finals={m.name: final})


def cross_modules(analyser: Analyser) -> list[str]:
    """The model's own cross-attention module (demo), or the layer a classifier pools (derived)."""
    bb = analyser.backbone
    own = getattr(bb.model, "cross_attn", None)
    if bb.native_cross:
        return [own] if isinstance(own, str) and _mha(analyser, own) else []
    return [bb.classifier_layer] if bb.classifier_layer else []


def cross_strip(ctx: Context) -> Strip:
    """Per prompt: its tokens, the text query, similarity to every patch, the softmax, the map."""
    maps = [m for m in ctx.maps.values() if m.kind == "cross"][:MAX_ROWS]
    bb = ctx.bb
    if bb.native_cross and not cross_modules(ctx.analyser):
        raise AttnvizError(f"explain cross: {bb.name}'s text-to-image attention is not one "
                           "nn.MultiheadAttention; its stages cannot be drawn yet")
    rows, finals = [], {}
    for j, m in enumerate(maps):
        row = _native_cross(ctx, m, j) if bb.native_cross else _derived_cross(ctx, m)
        rows.append(row)
        finals[m.name] = row[-1]
    prov = "native" if bb.native_cross else "derived"
    return Strip("cross", f"text-to-image cross-attention — {prov}, {maps[0].layer}", rows,
                 [repr(m.meta.get("prompt", "")) for m in maps], finals=finals)


def _native_cross(ctx: Context, m, j: int) -> list[Panel]:
    from attnviz.zoo.model import tokenize   # the demo's caption vocabulary
    name = m.layer
    scores, attn, _ = mha_stages(ctx.bb.model.get_submodule(name), ctx.tap.args[name], ctx.tap.kwargs[name])
    module = ctx.bb.model.get_submodule(name)
    q = ctx.tap.args[name][0].float()[0, j]                                # (E,) the caption's query input
    wq = module.in_proj_weight.chunk(3)[0] if module._qkv_same_embed_dim else module.q_proj_weight
    bq = module.in_proj_bias.chunk(3)[0] if module.in_proj_bias is not None else None
    Q = F.linear(q, wq.float(), None if bq is None else bq.float())       # (E,)
    grid = m.data.shape
    prompt = m.meta["prompt"]
    ids = tokenize(prompt)
    lines = [f"“{prompt}”"] + [f"{w} → {int(i)}" for w, i in zip(prompt.lower().split(), ids)]
    return [Panel("prompt tokens", "T: M×d_t (caption words → ids)", "native", "tokenizer", np32(ids.float()),
                  view="text", labels=lines),
            Panel("text query", "Q = T·Wq", "native", name, np32(Q), view="bars"),
            Panel("similarity to every patch", "Q·Kᵀ/√d, K = X·Wk", "native", name,
                  np32(scores[0, :, j].mean(0).reshape(grid)), cmap="RdBu_r"),
            Panel("softmax", "A = softmax_N(Q·Kᵀ/√d)", "native", name, np32(attn[0, :, j].mean(0).reshape(grid))),
            Panel("the map", "A over the image", "native", name, np32(attn[0, :, j].mean(0).reshape(grid)),
                  view="overlay", cmap="jet")]


def _derived_cross(ctx: Context, m) -> list[Panel]:
    bb, src = ctx.bb, ctx.bb.classifier_layer
    f = ctx.features(src)                                                  # (1, C, H, W)
    classes = [c["index"] for c in m.meta["classes"]]
    w = bb.classifier.weight.detach().float()[classes].mean(dim=0)        # (C,)
    scores = torch.einsum("chw,c->hw", f[0], w) / f.shape[1] ** 0.5
    a = cross_map(f, w[None])[0]                                           # (H, W)
    lines = [f"“{m.meta['prompt']}”", f"({m.meta['prompt_source']})"] + \
        [f"class {c['index']}: {c['label']}" for c in m.meta["classes"]]
    return [Panel("prompt → classes", "classes named in the prompt", "derived", "class names",
                  np.asarray(classes, dtype=np.float32), view="text", labels=lines),
            Panel("text query", "w_c: the classifier's weight row", "derived", "classifier", np32(w), view="bars"),
            Panel("similarity to every patch", "w_c·x_i/√d", "derived", src, np32(scores), cmap="RdBu_r"),
            Panel("softmax", "A = softmax_N(w_c·x_i/√d)", "derived", src, np32(a)),
            Panel("the map", "A over the image", "derived", src, np32(a), view="overlay", cmap="jet")]

"""Self-attention: a transformer's own attention (native), else softmax(cos(x_i, x_j)/τ) (derived).

Definition: docs/attention.md §4.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnviz.geometry import Geometry
from attnviz.kinds.base import Batch, Kind, register_kind
from attnviz.kinds.outliers import RULE, apply_outliers, outlier_cells, token_norms
from attnviz.kinds.spatial import peak_fraction, spatial_logits
from attnviz.maps import cell_centre, inside, query_cell
from attnviz.probes.attention import cls_attention, query_attention, received_attention, rollout
from attnviz.results import AttentionMap

__all__ = ["self_attention", "row_and_received", "SelfAttention"]


def self_attention(f: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Row-stochastic attention between positions of one map: (C, H, W) -> (N, N), N = H·W."""
    x = F.normalize(f.flatten(1).T, dim=1)                # (N, C), row-major positions
    return torch.softmax(x @ x.T / tau, dim=1)            # (N, N)


def row_and_received(f: torch.Tensor, row: int, tau: float = 0.1, chunk: int = 1024
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row `row` of `self_attention(f)` and its column mean, in O(chunk·N) memory: (N,), (N,)."""
    x = F.normalize(f.flatten(1).T, dim=1)                # (N, C)
    received = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], chunk):
        received += torch.softmax(x[start:start + chunk] @ x.T / tau, dim=1).sum(dim=0)
    return torch.softmax(x[row] @ x.T / tau, dim=0), received / x.shape[0]


def _queries(batch: Batch) -> tuple[list[tuple[float, float]], str]:
    """Each image's query as (x, y) fractions of the image, and where it came from."""
    if batch.options.query is not None:
        x, y = batch.options.query
        return [(x / w, y / h) for w, h in batch.sizes], "--query"
    peaks = batch.cache.get("spatial_peak") or peak_fraction(spatial_logits(batch.features()), batch.geometry())
    return peaks, "spatial peak"


def _query_meta(frac: tuple[float, float], size: tuple[int, int], grid: tuple[int, int], source: str,
                geometry: Geometry | None = None) -> dict:
    """The query's cell (nearest measured centre, when the layer has a geometry) and its centre."""
    cell = query_cell(frac, (1, 1), grid, geometry)
    meta = {"query": cell_centre(cell, size, grid, geometry), "query_cell": list(cell), "query_source": source}
    if not inside(frac, (1, 1)):
        meta["query_clamped"] = True     # --query lies outside this image: the image is an error
        meta["query_asked"] = [round(frac[0] * size[0], 2), round(frac[1] * size[1], 2)]
    return meta


@register_kind
class SelfAttention(Kind):
    name = "self"
    order = 4
    needs = frozenset({"features", "attention"})

    def compute(self, batch: Batch) -> list[list[AttentionMap]]:
        # the same rule as `inspect` and the manifest (Inventory.self_source): geometry known, else derived
        source, _ = batch.inventory.self_source()
        modules = [n for n in source.modules if n in batch.attention or n in batch.windows] if source else []
        if not modules or modules[-1] != source.modules[-1]:
            return self._derived(batch)
        if source.mode == "windows":
            return self._windows(batch, modules)
        return self._tokens(batch, modules, source.prefix, source.grid, source.mode == "class")

    def _derived(self, batch: Batch) -> list[list[AttentionMap]]:
        f = batch.features()                                              # (B, C, H, W)
        grid = tuple(f.shape[2:])
        queries, source = _queries(batch)
        tau = batch.options.tau
        out = []
        for i in range(f.shape[0]):
            meta = {**_query_meta(queries[i], batch.sizes[i], grid, source, batch.geometry(grid=grid)),
                    "tau": tau}
            row, col = meta["query_cell"]
            a_row, received = row_and_received(f[i], row * grid[1] + col, tau)   # (N,), (N,)
            out.append([
                AttentionMap("self", "self", "derived", batch.layer,
                             a_row.reshape(grid).cpu().numpy(), meta=meta),
                AttentionMap("self", "self-received", "derived", batch.layer,
                             received.reshape(grid).cpu().numpy(), meta={"tau": tau}),
            ])
        return out

    def _tokens(self, batch: Batch, modules: list[str], prefix: int, grid: tuple[int, int],
                class_only: bool) -> list[list[AttentionMap]]:
        """Token attention: the class token's row (or the query's, without one), rollout and received.

        `class_only`: class attention (CaiT, XCiT), where only the class token asks: (B, heads, 1, N).
        """
        last = modules[-1]
        head_layer = batch.options.self_layer if batch.options.self_layer in modules else last
        a = batch.attention[last]                                         # (B, heads, N, N) or (B, heads, 1, N)
        heads = batch.attention[head_layer]
        as_grid = lambda t: t.reshape(t.shape[0], *grid).cpu().numpy()   # noqa: E731  (B, N') -> (B, H, W)
        rolled = None if class_only else rollout([batch.attention[m] for m in modules])   # (B, N, N)
        # a query is only needed without a class token or for --query (the spatial peak costs work)
        queries, source = _queries(batch) if not prefix or batch.options.query is not None else ([], "")
        if prefix:
            main, per_head = cls_attention(a, prefix), heads[:, :, 0, prefix:]   # class token row
            roll, token = (None if rolled is None else rolled[:, 0, prefix:]), "class token"
        else:   # no class token: the row of the query position
            idx = [r * grid[1] + c for r, c in (query_cell(q, (1, 1), grid) for q in queries)]
            main = torch.stack([query_attention(a[i:i + 1], j)[0] for i, j in enumerate(idx)])
            per_head = torch.stack([heads[i, :, j] for i, j in enumerate(idx)])
            roll, token = torch.stack([rolled[i, j] for i, j in enumerate(idx)]), "query position"
        main, received = as_grid(main), as_grid(received_attention(a, prefix))
        roll = None if roll is None else as_grid(roll)
        per_head = per_head.reshape(per_head.shape[0], per_head.shape[1], *grid).cpu().numpy()
        outliers = _outliers(batch, prefix, grid)
        mode = batch.options.outliers
        how = next((x.how for x in batch.inventory.attention if x.name == last), "")
        out = []
        for i in range(a.shape[0]):
            cells = outliers[i] if outliers is not None else []
            fix = lambda m: apply_outliers(m, cells, mode)   # noqa: E731  keep | mask | interpolate
            meta = {"token": token, "heads_module": head_layer, "grid_source": how}
            if not prefix:          # the query position whose row is drawn
                meta.update(_query_meta(queries[i], batch.sizes[i], grid, source))
            maps = [AttentionMap("self", "self", "native", last, fix(main[i]), meta=meta,
                                 extras={"heads": fix(per_head[i])})]
            if not class_only:      # class attention has one query: no rollout, no received attention
                maps += [AttentionMap("self", "self-rollout", "native", last, fix(roll[i]),
                                      meta={"token": token, "layers": len(modules)}),
                         AttentionMap("self", "self-received", "native", last, fix(received[i]))]
            if batch.options.query is not None and not class_only:
                meta = _query_meta(queries[i], batch.sizes[i], grid, source)
                row, col = meta["query_cell"]
                m = query_attention(a[i:i + 1], prefix + row * grid[1] + col, prefix)[0]
                maps.append(AttentionMap("self", "self-query", "native", last,
                                         fix(m.reshape(grid).cpu().numpy()), meta=meta))
            if outliers is not None:
                for m in maps:
                    m.meta.update({"outlier_tokens": cells, "outliers": mode, "outlier_rule": RULE})
            out.append(maps)
        return out

    def _windows(self, batch: Batch, modules: list[str]) -> list[list[AttentionMap]]:
        name = batch.options.self_layer if batch.options.self_layer in modules else modules[-1]
        wa = batch.windows[name]
        queries, source = _queries(batch)
        out = []
        for i in range(len(batch.sizes)):
            meta = {**_query_meta(queries[i], batch.sizes[i], wa.grid, source, batch.geometry(name, wa.grid)),
                    "window": list(wa.window), "layout": wa.layout}
            row, col = meta["query_cell"]
            heads = wa.query_map(row, col)[i]                             # (heads, H, W)
            out.append([AttentionMap("self", "self", "native", name, heads.mean(dim=0).numpy(),
                                     meta=meta, extras={"heads": heads.numpy()})])
        return out


def _outliers(batch: Batch, prefix: int, grid: tuple[int, int]) -> list[list[list[int]]] | None:
    """Per image, the patch tokens of outlying norm at the captured layer (None: it holds no tokens)."""
    info = batch.backbone.layers.get(batch.layer)
    if info is None or info.layout.kind != "NLC" or tuple(info.layout.grid or ()) != tuple(grid) \
            or batch.layer not in batch.outputs:
        return None
    return outlier_cells(token_norms(batch.outputs[batch.layer], info.layout.prefix, grid))

"""Grad-CAM (Selvaraju et al. 2017) on --layer: ReLU(Σ_c w_c F_c), w_c = spatial mean of ∂y_t/∂F_c.

Definition: docs/attention.md §6.4. The baseline users compare attention with; derived (a formula
over a layer's features and their gradient, not an attention module of the model). One backward
per target for the whole batch.
"""
from __future__ import annotations

import torch

from attnviz.backbones import Backbone
from attnviz.errors import AttnvizError
from attnviz.kinds.base import Batch, Kind, register_kind
from attnviz.kinds.gradients import target_slots, map_name, parse_targets, target_meta
from attnviz.maps import to_grid
from attnviz.results import AttentionMap, Options

__all__ = ["gradcam", "GradCam"]


def gradcam(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """ReLU(Σ_c mean_hw(g_c) · f_c) for features and their gradient (B, C, H, W) -> (B, H, W)."""
    w = g.mean(dim=(2, 3), keepdim=True)
    return (w * f).sum(dim=1).clamp(min=0)


@register_kind
class GradCam(Kind):
    name = "gradcam"
    order = 12
    default = False
    needs = frozenset({"gradients", "logits"})

    def unavailable(self, backbone: Backbone, options: Options) -> str | None:
        if getattr(backbone, "bundle", None) is not None:
            return f"{backbone.name} ranks text prompts outside the image graph: gradcam targets classes"
        if not backbone.categories:
            return f"{backbone.name} has no classes to target"
        return None

    def prepare(self, backbone: Backbone, options: Options) -> list[int]:
        return parse_targets(options.targets, backbone.categories)

    def compute(self, batch: Batch) -> list[list[AttentionMap]]:
        out_t = batch.grads.outputs.get(batch.layer) if batch.grads is not None else None
        if out_t is None or out_t.grad_fn is None:
            raise AttnvizError(f"gradcam: --layer {batch.layer} produced no output inside the gradient graph")
        if out_t._version != batch.grads.versions.get(batch.layer, out_t._version):
            raise AttnvizError(f"gradcam: --layer {batch.layer}'s output is changed in place later in the "
                               f"forward (e.g. a residual `+=`); choose the enclosing block")
        layout = batch.backbone.layer(batch.layer).layout
        f = to_grid(out_t.detach(), layout).float()
        out: list[list[AttentionMap]] = [[] for _ in batch.sizes]
        used: list[set[str]] = [set() for _ in batch.sizes]
        for idx, source in target_slots(batch, batch.plans.get(self.name)):
            with torch.enable_grad():
                y = batch.logits.gather(1, idx[:, None]).sum()
                g, = torch.autograd.grad(y, out_t, retain_graph=True)
            maps = gradcam(f, to_grid(g, layout).float()).cpu().numpy()
            for i, t in enumerate(idx.tolist()):
                meta = target_meta(batch, i, t, source)
                label = meta["target"]["label"]
                out[i].append(AttentionMap(self.name, map_name(self.name, label, source, used[i]), "derived",
                                           batch.layer, maps[i], meta=meta))
        return out

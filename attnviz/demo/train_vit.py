"""Train DemoViT on the demo world: ``python -m attnviz.demo.train_vit [--out PATH] [--minutes 14]``.

Loss: multi-label presence of the 24 categories (BCE), nothing else; no loss touches an
attention map. Scenes come from ``numpy.random.default_rng([seed, STREAM])``: STREAM 2, then 3
and 4 for later rounds with ``--init`` (the recipe: attnviz/zoo/VIT_MODEL_CARD.md); DemoNet's
stream is ``[seed, 1]``; the held-out scenes use other seeds. AdamW, warm-up then cosine over
``--steps`` or ``--minutes``, whichever comes first (as ``attnviz.demo.train``). ``--free P``:
that share of scenes holds 2–3 freely drawn categories (the world's distractors always share an
attribute with the target; free pairs ask which colour goes with which shape — round 4 of the card).
``--mil W``: adds W × the same BCE on the largest logit over the patch tokens, read through the
model's own final norm and head (multiple-instance learning on the same presence labels; no box,
mask or attention enters the loss): a category absent from a scene must be absent from every patch
token, so the tokens of a red circle cannot also say "red square" (round 6 of the card).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attnviz.demo.train import lr_at
from attnviz.zoo.model import preprocess
from attnviz.zoo.vit import VIT_WEIGHTS_PATH, DemoViT
from attnviz.zoo.world import CATEGORIES, make_scene, make_scenes

VAL_SEED = 777_002


class _Batches(torch.utils.data.IterableDataset):
    """Endless (images, presence) batches from one seeded stream."""

    def __init__(self, seed: int, batch: int, size: int, stream: int = 2, objects: tuple[int, ...] = (1, 2, 3),
                 free: float = 0.0):
        self.seed, self.batch, self.size, self.stream, self.objects = seed, batch, size, stream, objects
        self.free = free

    def _scene(self, rng: np.random.Generator):
        if self.free and rng.random() < self.free:
            # 2–3 objects of any distinct categories: "red square + blue circle" without "red circle"
            # asks which colour goes with which shape, which the world's target + distractors never do
            pick = rng.choice(len(CATEGORIES), int(rng.integers(2, 4)), replace=False)
            return make_scene(rng, size=self.size, categories=[tuple(CATEGORIES[i].split(" ")) for i in pick])
        return make_scene(rng, size=self.size, n_objects=None if self.objects == (1, 2, 3)
                          else int(rng.choice(self.objects)))

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.stream])
        while True:
            scenes = [self._scene(rng) for _ in range(self.batch)]
            yield preprocess([s.image for s in scenes]), torch.from_numpy(np.stack([s.presence() for s in scenes]))


def _loss(model: DemoViT, x: torch.Tensor, y: torch.Tensor, mil: float = 0.0) -> torch.Tensor:
    """Presence BCE of the class token, plus ``mil`` × the same on the max over patch tokens."""
    z = model.blocks(model.tokens(x))
    loss = F.binary_cross_entropy_with_logits(model.forward_head(z), y)
    if mil:
        patches = model.head(model.norm(z[:, model.prefix:])).amax(1)    # (B, categories)
        loss = loss + mil * F.binary_cross_entropy_with_logits(patches, y)
    return loss * (y.shape[1] / 4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attnviz.demo.train_vit", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=VIT_WEIGHTS_PATH)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=14.0)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init", type=Path, default=None, help="continue from these weights (a second round)")
    ap.add_argument("--stream", type=int, default=2, help="scene stream [seed, STREAM] (a new one per round)")
    ap.add_argument("--objects", default="1,2,3", help="objects per training scene, drawn uniformly from this list")
    ap.add_argument("--free", type=float, default=0.0, help="share of scenes with 2–3 freely drawn categories")
    ap.add_argument("--mil", type=float, default=0.0,
                    help="weight of the presence BCE on the max over patch tokens (same norm and head)")
    ap.add_argument("--depth", type=int, default=4, help="transformer blocks (a new architecture: from scratch)")
    ap.add_argument("--context", type=int, default=0, help="3×3 convs on the token grid after the stem (from scratch)")
    args = ap.parse_args(argv)
    objects = tuple(int(v) for v in args.objects.split(","))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = DemoViT(depth=args.depth, context=args.context)
    if args.init is not None:
        model.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=True))
    loader = iter(torch.utils.data.DataLoader(_Batches(args.seed, args.batch, model.input_size, args.stream, objects, args.free),
                                              batch_size=None, num_workers=1, prefetch_factor=4))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd)
    val = make_scenes(200, VAL_SEED, size=model.input_size)
    xv, yv = preprocess([s.image for s in val]), torch.from_numpy(np.stack([s.presence() for s in val]))
    print(f"DemoViT: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    t0, step, progress, run = time.time(), 0, 0.0, 0.0
    while progress < 1.0:
        for g in opt.param_groups:
            g["lr"] = lr_at(progress, args.lr)
        model.train()
        x, y = next(loader)
        loss = _loss(model, x, y, args.mil)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        run += loss.item()
        progress = max(step / args.steps, (time.time() - t0) / (args.minutes * 60))
        if step % 100 == 0:
            model.eval()
            with torch.no_grad():
                pred = model(xv) > 0
            exact = float((pred == (yv > 0.5)).all(1).float().mean())
            print(f"step {step:5d} {(time.time() - t0) / 60:5.1f} min loss {run / 100:.4f} "
                  f"val exact {exact:.3f}", flush=True)
            run = 0.0
    model.eval()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, args.out)
    print(f"saved {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) after {step} steps, "
          f"{(time.time() - t0) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A demo world with known answers and a small model trained on it.

``attnviz.demo.world`` generates seeded scenes of coloured shapes (ground-truth boxes, masks and
captions); ``attnviz.demo.model`` holds ``DemoNet`` (SE + CBAM spatial gate, transformer
self-attention, text-to-image cross-attention, all trained) and ``load_demo_model()``;
``attnviz.demo.pointing`` checks that the model's own attention maps point at the right object;
``python -m attnviz.demo.train`` retrains the committed weights.
"""
from __future__ import annotations

from .model import (CROSS_ATTN, SE_GATE, SE_MODULE, SELF_ATTN, SPATIAL_GATE, SPATIAL_MODULE,
                    DemoNet, caption_ids, load_demo_model, preprocess, tokenize)
from .world import CATEGORIES, COLOURS, SHAPES, Scene, SceneObject, make_scene, make_scenes

__all__ = [
    "DemoNet", "load_demo_model", "tokenize", "caption_ids", "preprocess",
    "SE_MODULE", "SE_GATE", "SPATIAL_MODULE", "SPATIAL_GATE", "SELF_ATTN", "CROSS_ATTN",
    "Scene", "SceneObject", "make_scene", "make_scenes", "CATEGORIES", "COLOURS", "SHAPES",
]

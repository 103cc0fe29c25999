"""Faithfulness (deletion/insertion) and sanity (model randomisation) on models with known answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from attnviz.metrics import spearman
from attnviz.pipeline.checks import faithfulness, randomised, sanity
from attnviz.pipeline import Analyser
from attnviz.results import AttentionMap


def _ref_spearman(a, b):
    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return np.array(r)
    ra, rb = ranks(list(a)), ranks(list(b))
    return float(((ra - ra.mean()) * (rb - rb.mean())).sum() / np.sqrt(((ra - ra.mean()) ** 2).sum() * ((rb - rb.mean()) ** 2).sum()))


def test_spearman_with_ties_matches_a_reference():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 30).astype(float), rng.normal(size=30)
    assert spearman(a, b) == pytest.approx(_ref_spearman(a, b), abs=1e-12)
    assert spearman(np.arange(10.0), np.arange(10.0) ** 3) == pytest.approx(1.0)
    assert spearman(np.ones(5), np.arange(5.0)) == 0.0


def test_deletion_and_insertion_reward_the_map_that_points_right():
    an = Analyser("model:tests.models:quadrant_net", ["spatial"])
    image = Image.fromarray(np.full((32, 32, 3), 230, np.uint8))      # bright everywhere
    right = np.zeros((8, 8), np.float32)
    right[:4, :4] = 1
    wrong = np.zeros((8, 8), np.float32)
    wrong[4:, 4:] = 1
    maps = [AttentionMap("spatial", "right", "derived", "features", right),
            AttentionMap("spatial", "wrong", "derived", "features", wrong)]
    scores = faithfulness(an, image, maps, steps=8)
    assert scores["right"]["deletion"] < scores["wrong"]["deletion"] - 0.1
    assert scores["right"]["insertion"] > scores["wrong"]["insertion"] + 0.1


def test_randomised_copy_changes_every_parameter_and_leaves_the_original():
    an = Analyser("model:tests.models:cbam_net", ["spatial"])
    before = {k: v.clone() for k, v in an.backbone.model.state_dict().items()}
    rand = randomised(an.backbone, seed=1)
    for (k, v), w in zip(an.backbone.model.named_parameters(), rand.model.parameters()):
        assert torch.equal(v, before[k]), k                      # the original is untouched
        if v.dim() >= 2:                                         # weights (norms reset to 1/0)
            assert not torch.equal(v, w), k


def test_sanity_reports_a_correlation_per_kind():
    an = Analyser("model:tests.models:cbam_net", ["spatial", "channel"])
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    rho = sanity(an, images)
    assert set(rho) == {"spatial", "channel"} and all(-1 <= v <= 1 for v in rho.values())

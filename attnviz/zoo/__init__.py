"""Models that ship with attnviz: the demo world (scenes with known answers) and DemoNet trained on it.

``attnviz.zoo.world`` generates seeded scenes of coloured shapes (ground-truth boxes, masks and
captions); ``attnviz.zoo.model`` holds ``DemoNet`` (SE + CBAM spatial gate, transformer
self-attention, text-to-image cross-attention, all trained) and ``load_demo_model()``.
The app that runs and scores it (``attnviz demo``, ``python -m attnviz.demo.train``) is
``attnviz.demo``, above the pipeline.
"""

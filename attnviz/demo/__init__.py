"""`attnviz demo`: the demo model (``attnviz.zoo``) through the product pipeline, scored.

``attnviz.demo.run`` writes scenes and runs the pipeline on them; ``attnviz.demo.pointing``
checks that the model's own attention maps point at the right object;
``python -m attnviz.demo.train`` retrains the committed weights (``attnviz/zoo/weights.pt``).
"""

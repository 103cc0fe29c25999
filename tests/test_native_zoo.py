"""A zoo of 28 timm / Hugging Face architectures (random init): what `inspect` says, what `run` draws
and what the manifest claims agree, and every native self map equals the drawn module's own
softmax (unfused, recorded by test-owned wrappers) to 1e-4 of its peak. README table: same run."""
from __future__ import annotations

import math

import pytest

from tests.zoo_native import ZOO, Entry, run_entry

pytest.importorskip("timm")
pytest.importorskip("transformers")


@pytest.mark.parametrize("entry", [pytest.param(e, marks=pytest.mark.slow) if e.slow else e for e in ZOO],
                         ids=[e.label.split(" (")[0].replace(" ", "-") for e in ZOO])
def test_zoo_inspect_run_and_manifest_agree_and_native_is_exact(entry: Entry) -> None:
    o = run_entry(entry)
    assert o.drawn == set(entry.native), o.notes
    assert set(o.run_native) == o.drawn                   # the manifest claims exactly what is drawn native
    assert {k: v for k, v in o.inspect_native.items() if k in o.kinds} == o.run_native   # inspect agrees
    assert "cross" not in o.run_native                    # no text tower: never native cross
    if "self" in entry.native:
        assert o.error is not None
        assert math.isnan(o.error) or o.error <= 1e-4, o.error   # nan: Swin, checked in test_capture_zoo

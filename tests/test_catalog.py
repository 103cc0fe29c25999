"""The torch-free catalog (attnviz.catalog) mirrors the registries: every kind and family, field by field."""
from __future__ import annotations

import pytest

from attnviz import catalog
from attnviz.backbones import families
from attnviz.errors import AttnvizError
from attnviz.kinds import KINDS, get_kinds


def test_every_registered_kind_is_catalogued_as_registered():
    registered = {k.name: catalog.KindInfo(k.name, k.order, k.default, frozenset(k.needs), k.summary())
                  for k in KINDS.values()}
    assert list(catalog.KINDS) == list(registered)        # registration order: the error lists it
    assert catalog.KINDS == registered


def test_every_family_is_catalogued_as_registered():
    registered = [(f.prefix, f.syntax, f.summary, f.names is not None) for f in families()]
    assert [(f.prefix, f.syntax, f.summary, f.lists is not None) for f in catalog.FAMILIES] == registered


@pytest.mark.parametrize("name", ["chanel", "spatail", "gradcam++", "SELF", ""])
def test_the_catalog_refuses_a_name_as_the_registry_does(name):
    with pytest.raises(AttnvizError) as registry:
        get_kinds([name])
    with pytest.raises(AttnvizError) as early:
        catalog.check_kind_names([name])
    assert str(early.value) == str(registry.value)


def test_every_registered_name_passes():
    catalog.check_kind_names(list(KINDS))

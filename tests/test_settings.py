"""One settings schema: the CLI's run options, the Python keywords, the manifest and the resume
fingerprint all come from `attnviz.settings.SCHEMA` (walked here against each of them)."""
from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest
import typer

from attnviz.cli import app
from attnviz.errors import AttnvizError
from attnviz.pipeline.analyser import AnalyserConfig
from attnviz.report.manifest import Manifest, RunRecord
from attnviz.report.outputs import Style
from attnviz.results import Options
from attnviz.settings import SCHEMA, Settings, check, fingerprint_names, group, split_list
from tests.clirun import FAST, cli


def _run_command():
    return typer.main.get_command(app).commands["run"]


def _flags(s) -> set[str]:
    return {f for flag in s.flags for f in flag.split("/")}


def test_every_run_option_comes_from_the_schema_and_every_flagged_setting_is_an_option():
    by_param = {s.cli_param: s for s in SCHEMA.values() if s.flags}
    options = [p for p in _run_command().params if p.param_type_name == "option"]
    assert sorted(p.name for p in options) == sorted(by_param)
    for p in options:
        s = by_param[p.name]
        assert set(p.opts) | set(p.secondary_opts) == _flags(s), p.name
        assert p.help == s.help, p.name
        want = (not s.default) if s.invert else s.default
        if s.name == "out":
            assert p.required
        else:
            assert p.default == (None if s.many or isinstance(want, tuple) else want), p.name
        lo, hi = p.min, p.max
        assert (lo, hi) == (s.min, s.max), p.name


def test_python_keywords_come_from_the_schema():
    config = {f.name: f.default for f in dataclasses.fields(AnalyserConfig)}
    assert config == {s.name: s.default for s in group("analyser")}
    assert {f.name: f.default for f in dataclasses.fields(Options)} == {s.name: s.default for s in SCHEMA.values()
                                                                        if s.kinds}
    style = {f.name: f.default for f in dataclasses.fields(Style) if f.name != "banner"}
    assert style == {s.name: s.default for s in group("style")}
    assert [f.name for f in dataclasses.fields(Settings)] == list(SCHEMA)


def test_one_tau_limit_for_the_cli_and_the_api(tmp_path):
    with pytest.raises(AttnvizError, match=r"--tau 1e-05: use a number ≥ 0.0001"):
        AnalyserConfig(tau=1e-5)
    assert AnalyserConfig(tau=1e-4).tau == 1e-4
    out = cli("run", str(tmp_path / "none.png"), "-o", str(tmp_path / "o"), *FAST, "--tau", "1e-5")
    assert out.code == 2 and "--tau" in out.stderr and "0.0001" in out.stderr


@pytest.mark.parametrize("name, bad", [("size", 15), ("size", 8193), ("alpha", 1.5), ("top_k", 0),
                                       ("input_size", 4000), ("batch_size", 0), ("format", "gif"),
                                       ("outliers", "drop"), ("variant", "best"), ("workers", -1)])
def test_limits_are_checked_from_the_schema(name, bad):
    with pytest.raises(AttnvizError, match=SCHEMA[name].flags[0].split("/")[0]):
        check(name, bad)


def test_manifest_settings_and_fingerprint_are_the_schema_s(tmp_path):
    config = AnalyserConfig(texts=("a cat",), targets=("tabby", 3))
    record = RunRecord(backbone={"name": "x", "pretrained": True, "device": "cpu"}, kinds=["spatial"],
                       settings=config.settings())
    m = Manifest(tmp_path, record, Style(size=64), 4, "attnviz run", {"faithfulness": False, "sanity": True})
    assert set(m.head["settings"]) == {"kinds"} | {s.name for s in SCHEMA.values() if s.manifest}
    assert set(m.fingerprint["settings"]) == {"kinds"} | set(fingerprint_names())
    assert m.fingerprint["settings"]["targets"] == ["tabby", 3] and m.fingerprint["settings"]["sanity"] is True
    assert m.head["settings"]["size"] == 64 and m.head["settings"]["batch_size"] == 4
    assert "batch_size" not in m.fingerprint["settings"] and "device" not in m.fingerprint["backbone"]


def test_report_takes_a_typed_record_not_the_analyser():
    hints = typing.get_type_hints(Manifest.__init__)
    assert hints["record"] is RunRecord and typing.Any not in hints.values()
    assert "analyser" not in inspect.signature(Manifest.__init__).parameters


def test_one_list_parser():
    assert split_list("a, b,,c") == ["a", "b", "c"]
    assert split_list(["a,b", " c "]) == ["a", "b", "c"]
    assert split_list(None) == []


def test_schema_choices_are_the_libraries_own():
    from attnviz.backbones.clip_variants import CHOICES
    from attnviz.report.atomic import FORMATS
    assert SCHEMA["variant"].choices == CHOICES
    assert SCHEMA["format"].choices == tuple(FORMATS)


@pytest.mark.parametrize("command", ["compare", "explain"])
def test_shared_options_of_other_commands_have_the_schema_s_flags_defaults_and_limits(command):
    by_param = {s.cli_param: s for s in SCHEMA.values() if s.flags}
    cmd = typer.main.get_command(app).commands[command]
    shared = [p for p in cmd.params if p.param_type_name == "option" and p.name in by_param]
    assert {"backbone", "weights", "tau" if command == "explain" else "alpha", "input_size"} <= {p.name for p in shared}
    for p in shared:
        s = by_param[p.name]
        assert set(p.opts) | set(p.secondary_opts) == _flags(s), p.name
        assert (p.min, p.max) == (s.min, s.max), p.name
        assert p.default == (None if s.many else s.default), p.name

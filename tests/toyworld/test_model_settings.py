"""A model folder's world.json carries the demo settings chosen on its tuning clips; options override them."""

import json

import pytest

from ditflow_fast.toyworld.settings import DemoSettings, model_settings


def test_a_folder_without_chosen_settings_gets_the_defaults(tmp_path):
    assert model_settings(tmp_path) == DemoSettings()
    (tmp_path / "world.json").write_text(json.dumps({"frames": 8}))
    assert model_settings(tmp_path) == DemoSettings()


def test_chosen_settings_override_the_defaults(tmp_path):
    (tmp_path / "world.json").write_text(json.dumps({"demo_settings": {"lr": [0.04, 0.02], "kv_injection": False}}))
    s = model_settings(tmp_path)
    assert s.lr == (0.04, 0.02) and s.kv_injection is False and s.steps == DemoSettings().steps


def test_an_unknown_setting_is_refused_by_name(tmp_path):
    (tmp_path / "world.json").write_text(json.dumps({"demo_settings": {"lr": [0.04, 0.02], "tempreature": 1}}))
    with pytest.raises(ValueError, match="tempreature"):
        model_settings(tmp_path)


def test_the_demo_command_line_overrides_only_what_it_is_given(tmp_path, monkeypatch):
    import argparse

    import ditflow_fast.toyworld.demo as demo
    from ditflow_fast.toyworld import cli

    monkeypatch.setattr(cli, "model_settings", lambda model: DemoSettings(lr=(0.04, 0.02), kv_injection=False))
    seen = {}

    def fake_run_demo(out, **kw):
        seen.update(kw)
        raise KeyboardInterrupt  # stop before any output is read back

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    parser = argparse.ArgumentParser()
    cli.add_demo_parser(parser.add_subparsers())
    args = parser.parse_args(["demo", "--out", str(tmp_path / "o"), "--guided-steps", "7"])
    with pytest.raises(KeyboardInterrupt):
        args.func(args)
    s = seen["settings"]
    assert (s.guided_steps, s.lr, s.kv_injection) == (7, (0.04, 0.02), False)


@pytest.mark.parametrize("given,expected", [([], False), (["--amf-rope", "on"], True), (["--amf-rope", "off"], False)])
def test_the_demo_takes_the_models_amf_rope_unless_told(tmp_path, monkeypatch, given, expected):
    import argparse

    import ditflow_fast.toyworld.demo as demo
    from ditflow_fast.toyworld import cli

    monkeypatch.setattr(cli, "model_settings", lambda model: DemoSettings(amf_rope=False))
    seen = {}

    def fake_run_demo(out, **kw):
        seen.update(kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    parser = argparse.ArgumentParser()
    cli.add_demo_parser(parser.add_subparsers())
    args = parser.parse_args(["demo", "--out", str(tmp_path / "o"), *given])
    with pytest.raises(KeyboardInterrupt):
        args.func(args)
    assert seen["settings"].amf_rope is expected

"""The generation flags that generate, upscale and refine share are one definition (cli/args.py):
the same name, type, range, metavar and choices on every command."""

from __future__ import annotations

import argparse

import pytest

from paradiff_gui.cli import build_parser

SHARED = ["--model", "--prompt", "--negative", "--steps", "--seed", "--guidance", "--sampler", "--tile-batch",
          "--device", "--dtype", "--host-memory", "--set", "--lora", "--quiet"]


def _options(command: str) -> dict[str, argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {s: a for a in sub.choices[command]._actions for s in a.option_strings}


@pytest.mark.parametrize("flag", SHARED)
def test_a_generation_flag_is_the_same_on_every_command_that_takes_it(flag):
    actions = {c: o[flag] for c in ("generate", "upscale", "refine") if flag in (o := _options(c))}
    assert set(actions) == {"generate", "upscale", "refine"}
    first, *rest = actions.values()
    for other in rest:
        assert (other.dest, other.type, other.metavar, other.choices, other.default, type(other)) == (
            first.dest, first.type, first.metavar, first.choices, first.default, type(first)), flag


@pytest.mark.parametrize("command", ["upscale", "refine"])
def test_a_number_out_of_its_form_is_refused_alike_by_every_command(command, capsys, tmp_path):
    from paradiff_gui.cli import main

    with pytest.raises(SystemExit) as exc:
        main([command, str(tmp_path / "a.png"), "--steps", "many"])
    assert exc.value.code == 2
    assert "error: argument --steps: must be a whole number from 1 to 1000, got 'many'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []

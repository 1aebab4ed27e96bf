"""Generated garbage against the request validator, request files, image metadata and the CLI:
every rejection is a RequestError naming a field (exit 2 in the CLI), never another exception."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from paradiff_gui.cli import main
from paradiff_gui.engine.core.request import GenerationRequest, RequestError
from paradiff_gui.engine.io.metadata import load_request, read_recipe

FIELDS = [f.name for f in dataclasses.fields(GenerationRequest)]
junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


@given(st.dictionaries(st.sampled_from([*FIELDS, "schema", "bogus"]), junk, max_size=8))
def test_any_dict_is_a_request_or_a_request_error_naming_a_field(data):
    try:
        req = GenerationRequest.from_dict(data)
    except RequestError as exc:
        assert exc.field and exc.message and str(exc).startswith(f"{exc.field}: ")
        return
    assert GenerationRequest.from_json(req.to_json()) == req  # what is accepted round-trips


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40)
def test_any_request_file_is_a_request_or_a_request_error(tmp_path, raw):
    path = tmp_path / "r.json"
    path.write_bytes(raw)
    try:
        load_request(path)
    except RequestError as exc:
        assert exc.field


@given(st.text(max_size=200) | junk.map(json.dumps))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40)
def test_any_png_metadata_is_a_recipe_or_a_request_error(tmp_path, text):
    meta = PngImagePlugin.PngInfo()
    meta.add_itxt("paradiff", text)
    path = tmp_path / "m.png"
    Image.new("L", (8, 8)).save(path, pnginfo=meta)
    try:
        data = read_recipe(path)
        GenerationRequest.from_dict(data["request"])
    except RequestError as exc:
        assert exc.field


flags = st.lists(st.sampled_from(["--size", "--grid", "--tile", "--overlap", "--steps", "--guidance", "--sampler",
                                  "--seed", "--fusion", "--global-context", "--tile-batch", "--device", "--dtype",
                                  "--terrain-difficulty", "--devices", "--model"]), min_size=1, max_size=3)
values = st.sampled_from(["", "0", "-1", "1e99", "nan", "x", "3x", "9x9x9", "65537x64", "auto", "cuda:99",
                          "cpu,", "\u202e", "999999999999", "64x64", "0.5"])


# Values no flag accepts (a model id may be any text, so --model is left out of this rule).
NEVER_VALID = {"", "-1", "1e99", "nan", "\u202e", "999999999999"}


@given(flags, st.lists(values, min_size=3, max_size=3))
@example(names=["--device", "--device"], vals=["", "auto", ""])  # the last of a repeated flag counts
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40)
def test_the_cli_answers_garbage_with_exit_2_and_a_field(capsys, monkeypatch, tmp_path, names, vals):
    # Generation itself is replaced at the CLI's edge: what is exercised is the parsing and the
    # validation of the flags, and a request that passes must be one the request type accepts.
    accepted = []

    def fake_generate(args, request, out, shard):
        accepted.append(request)
        return 99

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("paradiff_gui.cli.generate.generate_and_write", fake_generate)
    monkeypatch.setattr("paradiff_gui.cli.generate.launch_local_group", lambda args, request, out: fake_generate(
        args, request, out, None))
    argv = ["generate", "--quiet", "-o", "never.png"]
    for name, value in zip(names, vals):
        argv += [name, value]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    given_pairs = list(zip(names, vals))
    # A flag given twice keeps its last value (argparse): `--device "" --device auto` is valid.
    effective = dict(given_pairs)
    if any(value in NEVER_VALID for name, value in effective.items() if name != "--model"):
        assert code == 2, (argv, code, err)
    assert code in (2, 99), (argv, code, err)
    if code == 2:
        assert "error:" in err or "invalid input:" in err
        assert not accepted
    else:
        (request,) = accepted
        assert GenerationRequest.from_json(request.to_json()) == request  # valid by the request's own rules
    assert list(tmp_path.iterdir()) == []  # nothing written either way


@pytest.mark.parametrize("text", ["{", "[]", '{"request": 5}', '{"schema": 99}', "null"])
def test_malformed_request_files_name_the_problem(tmp_path, text):
    (tmp_path / "r.json").write_text(text)
    with pytest.raises(RequestError) as e:
        load_request(tmp_path / "r.json")
    assert e.value.field in ("request", "schema")

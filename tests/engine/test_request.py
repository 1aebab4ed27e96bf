from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paradiff_gui.engine.core import request as rq
from paradiff_gui.engine.core.request import GenerationRequest, RequestError

valid_requests = st.builds(
    GenerationRequest,
    model=st.sampled_from(["builtin:terrain", "some/hub-id", "/models/sd15"]),
    prompt=st.text(max_size=200),
    negative_prompt=st.text(max_size=50),
    width=st.integers(8, 2048).map(lambda v: v * 8),
    height=st.integers(8, 2048).map(lambda v: v * 8),
    grid=st.one_of(st.none(), st.tuples(st.integers(1, 64), st.integers(1, 64))),
    overlap=st.one_of(st.none(), st.integers(0, 256).map(lambda v: v * 8)),
    steps=st.integers(1, 1000),
    guidance=st.floats(1.0, 30.0),
    sampler=st.sampled_from(rq.SAMPLERS),
    seed=st.integers(0, rq.MAX_SEED),
    fusion=st.sampled_from(rq.FUSIONS),
    tile_batch=st.integers(1, 1024),
    device=st.sampled_from(["auto", "cpu", "cuda", "cuda:1", "mps"]),
    dtype=st.sampled_from(rq.DTYPES),
)


@given(valid_requests)
def test_json_round_trip_gives_the_identical_request(req):
    text = req.to_json()
    again = GenerationRequest.from_json(text)
    assert again == req
    assert again.to_json() == text


def test_tile_mode_round_trips():
    req = GenerationRequest(tile=512, overlap=64)
    assert GenerationRequest.from_json(req.to_json()) == req


@pytest.mark.parametrize(
    ("changes", "field", "allowed"),
    [
        ({"width": 100}, "width", "multiple of 8"),
        ({"width": 32}, "width", "from 64 to 65536"),
        ({"height": 70000}, "height", "from 64 to 65536"),
        ({"width": 512.0}, "width", "whole number"),
        ({"width": True}, "width", "whole number"),
        ({"grid": (0, 3)}, "grid", "from 1 to 64"),
        ({"grid": (3, 65)}, "grid", "from 1 to 64"),
        ({"grid": "3by5"}, "grid", "ROWSxCOLS"),
        ({"grid": (2, 2), "tile": 512}, "grid", "not both"),
        ({"tile": 32}, "tile", "from 64 to 4096"),
        ({"tile": 100}, "tile", "multiple of 8"),
        ({"overlap": -8}, "overlap", "from 0 to 2048"),
        ({"tile": 256, "overlap": 256}, "overlap", "less than the tile"),
        ({"steps": 0}, "steps", "from 1 to 1000"),
        ({"steps": 1001}, "steps", "from 1 to 1000"),
        ({"guidance": 0.5}, "guidance", "from 1.0 to 30.0"),
        ({"guidance": float("nan")}, "guidance", "from 1.0 to 30.0"),
        ({"guidance": "7"}, "guidance", "number"),
        ({"sampler": "euler_x"}, "sampler", "dpmpp_2m_karras"),
        ({"seed": -1}, "seed", "from 0 to 4294967295"),
        ({"seed": 2**32}, "seed", "from 0 to 4294967295"),
        ({"fusion": "blend"}, "fusion", "independent, none, uniform, gaussian, cosine"),
        ({"tile_batch": 0}, "tile_batch", "from 1 to 1024"),
        ({"device": "gpu"}, "device", "auto, cpu, cuda, cuda:N or mps"),
        ({"dtype": "fp8"}, "dtype", "auto, fp32, fp16, bf16"),
        ({"model": ""}, "model", "builtin:NAME"),
        ({"prompt": "x" * 4001}, "prompt", "at most 4000"),
        ({"prompt": 3}, "prompt", "text"),
    ],
)
def test_bad_fields_name_the_field_and_the_allowed_values(changes, field, allowed):
    with pytest.raises(RequestError) as info:
        GenerationRequest(**changes)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert allowed in str(info.value)


def test_from_dict_rejects_unknown_fields_and_wrong_schema():
    good = GenerationRequest().to_dict()
    with pytest.raises(RequestError, match=r"^colour: is not a request field"):
        GenerationRequest.from_dict({**good, "colour": "red"})
    with pytest.raises(RequestError, match=r"^schema: "):
        GenerationRequest.from_dict({**good, "schema": 99})
    with pytest.raises(RequestError, match=r"^request: is not valid JSON"):
        GenerationRequest.from_json("{nope")
    with pytest.raises(RequestError, match=r"^request: must be a JSON object"):
        GenerationRequest.from_json(json.dumps([1, 2]))


def test_grid_string_is_parsed_and_sizes_parse():
    assert GenerationRequest(grid="3x5").grid == (3, 5)
    assert rq.parse_size("4096x2048") == (4096, 2048)
    with pytest.raises(RequestError, match=r"^size: "):
        rq.parse_size("4096")

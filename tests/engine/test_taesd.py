"""Previews through a tiny autoencoder (models/sd/taesd.py) and the preview budget
(sampling/previews.py), on a tiny AutoencoderTiny built from config (no download)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderTiny
from fakes import FieldDenoiser

from paradiff_gui.cli import main
from paradiff_gui.engine import GenerationRequest, generate
from paradiff_gui.engine.core.events import Notice, StepStarted, TilePreview
from paradiff_gui.engine.core.request import RequestError
from paradiff_gui.engine.models import folders
from paradiff_gui.engine.models.registry import load_denoiser
from paradiff_gui.engine.models.sd import preview as linear
from paradiff_gui.engine.models.sd import taesd
from paradiff_gui.engine.sampling.previews import PROBE, STALE_STEPS, PreviewBudget

# A scaling and shift other than TAESD's 1 and 0, so the test sees they are applied.
SCALING, SHIFT = 0.5, 0.25


def tiny_taesd(latent_channels: int = 4) -> AutoencoderTiny:
    torch.manual_seed(3)
    return AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                           num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
                           latent_channels=latent_channels, scaling_factor=SCALING, shift_factor=SHIFT)


@pytest.fixture
def places(tmp_path, monkeypatch) -> Path:
    """An empty model folder and hub cache of the test's own (nothing of the machine's)."""
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("PARADIFF_MODEL_PATH", str(models))
    monkeypatch.setattr(folders, "user_data_path", lambda *a, **k: tmp_path / "user")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return models


@pytest.fixture
def with_taesd(places) -> Path:
    return _save(tiny_taesd(), places / "taesd")


def _save(vae: AutoencoderTiny, folder: Path) -> Path:
    vae.save_pretrained(str(folder), safe_serialization=True)
    return folder


def _request(folder, **kw) -> GenerationRequest:
    return GenerationRequest(**{"model": str(folder), "prompt": "a red castle", "width": 256, "height": 256,
                                "tile": 256, "steps": 2, "seed": 1, "device": "cpu", **kw})


def _run(req) -> tuple[list, dict]:
    events: list = []
    res = generate(req, events.append)
    return events, res.info


def test_a_tiny_autoencoder_in_a_model_folder_makes_the_previews(sd_folder, with_taesd, monkeypatch):
    monkeypatch.setattr(taesd, "BUDGET", None)  # every tile at every step
    events, info = _run(_request(sd_folder))
    assert info["preview"] == f"tiny autoencoder ({with_taesd})"
    assert any(isinstance(e, Notice) and "tiny autoencoder" in e.message for e in events)
    shown = [e for e in events if isinstance(e, TilePreview)]
    assert len(shown) == 2  # 1 tile × 2 steps
    assert {e.rgb.shape for e in shown} == {(256, 256, 3)}  # 32 latent px × 8, not the linear 32

    # The same x0 through the backend and through AutoencoderTiny.decode, and against the linear map.
    den = load_denoiser(_request(sd_folder), torch.device("cpu"), torch.float32)
    g = torch.Generator().manual_seed(0)
    x, pred = torch.randn(2, 4, 32, 32, generator=g), torch.randn(2, 4, 32, 32, generator=g)
    got = den.preview(x, pred, 500.0)
    x0 = linear.x0_from_vp(x, pred, float(den._alphas_cumprod[500]), den.prediction_type)
    ref = AutoencoderTiny.from_pretrained(str(with_taesd)).decode(x0 / SCALING + SHIFT, return_dict=False)[0]
    ref = ((ref.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert got.shape == ref.shape == (2, 256, 256, 3)
    assert (got.int() - ref.int()).abs().max() <= 1  # float rounding
    flat = linear.apply_linear_rgb(x0, den._rgb)
    up = flat.repeat_interleave(8, 1).repeat_interleave(8, 2)
    assert (got.float() - up.float()).abs().mean() > 10  # another decoder altogether


def test_large_tiles_are_averaged_down_on_the_device(with_taesd):
    tiny = taesd.TinyPreview(with_taesd, torch.device("cpu"), torch.float32)
    out = tiny.rgb(torch.randn(1, 4, 64, 48))  # 512x384 px decoded
    assert out.shape == (1, 256, 192, 3) and out.dtype == torch.uint8


def test_without_one_previews_stay_linear_and_taesd_is_refused(sd_folder, places, capsys):
    events, info = _run(_request(sd_folder))
    assert info["preview"] == "linear map"
    assert {e.rgb.shape for e in events if isinstance(e, TilePreview)} == {(32, 32, 3)}
    with pytest.raises(RequestError) as err:
        generate(_request(sd_folder, preview="taesd"))
    assert err.value.field == "preview" and "madebyollin/taesd" in str(err.value) and str(places) in str(err.value)
    code = main(["generate", "--model", str(sd_folder), "--size", "256x256", "--steps", "1", "--preview", "taesd",
                 "--device", "cpu", "--quiet", "-o", str(places / "x.png")])
    assert code == 2 and "preview" in capsys.readouterr().err


def test_linear_asked_for_ignores_a_tiny_autoencoder(with_taesd):
    cpu = torch.device("cpu")
    assert taesd.select("linear", "sd", "m", 4, cpu, torch.float32, None) is None
    assert taesd.select("auto", "sd", "m", 4, cpu, torch.float32, None).folder == with_taesd
    assert taesd.select("auto", "sdxl", "m", 4, cpu, torch.float32, None) is None  # TAESD is not TAESDXL


def test_a_backend_without_tiny_previews_refuses_taesd():
    req = GenerationRequest(model="fake", width=128, height=128, tile=64, overlap=16, steps=1, device="cpu",
                            preview="taesd")
    with pytest.raises(RequestError, match="preview"):
        generate(req, denoiser=FieldDenoiser())


def test_the_finder_reads_the_hub_cache_and_never_the_network(places, tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("the finder reached for the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(taesd, "_download", no_network)
    monkeypatch.setenv("PARADIFF_ALLOW_DOWNLOAD", "1")  # auto never downloads, even when allowed
    for family in taesd.TINY_IDS:
        assert taesd.find_tiny(family) is None
        assert taesd.select("auto", family, "m", 4, torch.device("cpu"), torch.float32, None) is None
    # A hub-cache snapshot, laid out as huggingface_hub writes it.
    repo = tmp_path / "hub" / "models--madebyollin--taesdxl"
    snap = _save(tiny_taesd(), repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert taesd.find_tiny("sdxl") == snap and taesd.find_tiny("sd") is None
    # A folder of the wrong kind is not taken.
    (places / "taesd").mkdir()
    (places / "taesd" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    (places / "taesd" / taesd.WEIGHTS).write_bytes(b"")
    assert taesd.find_tiny("sd") is None


def test_taesd_downloads_only_when_allowed_and_asked(places, monkeypatch):
    fetched = []
    monkeypatch.setattr(taesd, "_download", lambda family: fetched.append(family) or None)
    with pytest.raises(RequestError):
        taesd.select("taesd", "flux", "m", 16, torch.device("cpu"), torch.float32, None)
    assert fetched == []
    monkeypatch.setenv("PARADIFF_ALLOW_DOWNLOAD", "1")
    with pytest.raises(RequestError):
        taesd.select("taesd", "flux", "m", 16, torch.device("cpu"), torch.float32, None)
    assert fetched == ["flux"]


def test_a_tiny_autoencoder_of_other_latents_is_not_used(places):
    _save(tiny_taesd(latent_channels=16), places / "taesd")
    assert taesd.select("auto", "sd", "m", 4, torch.device("cpu"), torch.float32, None) is None
    with pytest.raises(RequestError, match="16-channel"):
        taesd.select("taesd", "sd", "m", 4, torch.device("cpu"), torch.float32, None)


def _drive(budget: PreviewBudget, now: list[float], batches, steps: int, call_s: float, tile_px: int,
           per_px_s: float, probe_fixed_s: float = 0.0) -> tuple[dict[int, int], float]:
    """Run ``budget`` as the sampler does, on a fake clock: each batch one model call of ``call_s``,
    then a probe while nothing is measured, then the previews that are due (``per_px_s`` a latent px).
    Returns the previews made per tile and the most the budget ever ran over its share (s)."""
    counts: dict[int, int] = {}
    over = 0.0
    for _step in range(steps):
        for batch in batches:
            now[0] += call_s
            if budget.needs_probe:
                cost = probe_fixed_s + PROBE * PROBE * per_px_s
                now[0] += cost
                budget.measured(PROBE * PROBE, cost)
            due = budget.due(batch, tile_px)
            chosen = [batch[k] for k in due]
            cost = per_px_s * tile_px * len(chosen)
            now[0] += cost
            budget.paid(chosen, tile_px, cost, _step)
            for i in chosen:
                counts[i] = counts.get(i, 0) + 1
            over = max(over, budget.spent - budget.share * (now[0] - budget.started))
    return counts, over


def test_the_budget_keeps_previews_to_their_share_and_takes_tiles_in_turn():
    now = [0.0]
    budget = PreviewBudget(0.02, clock=lambda: now[0])
    tiles = list(range(6))
    counts, _ = _drive(budget, now, (tiles[:2], tiles[2:4], tiles[4:]), 400, 1.0, 1024, 0.1 / 1024)
    assert budget.spent <= 0.02 * now[0] + 0.1  # within one tile's cost of the share
    assert budget.spent >= 0.015 * now[0]  # and the share is used
    assert max(counts.values()) - min(counts.values()) <= 1  # every tile in turn


def test_no_whole_decode_runs_before_the_budget_covers_it():
    # The benchmark's CPU run: 15 tiles of 32² latent px in batches of 4, 8 steps, a model call of
    # 1.6 s a batch and a tiny-autoencoder decode of 2.4 s a tile (more than the 2 % share of the
    # whole run). The cost is first measured on a PROBE² corner (with a fixed cost too, the first
    # call's), so previews overshoot their share by that probe at most, not by a whole decode.
    now = [0.0]
    budget = PreviewBudget(0.02, clock=lambda: now[0])
    tiles = list(range(15))
    batches = [tiles[k : k + 4] for k in range(0, 15, 4)]
    per_px, fixed = 2.4 / 1024, 0.05
    counts, over = _drive(budget, now, batches, 8, 1.6, 1024, per_px, fixed)
    probe = fixed + PROBE * PROBE * per_px
    assert over <= probe + 1e-9
    assert budget.spent <= 0.02 * now[0] + probe  # the run is slowed by its share and the probe, no more
    assert sum(counts.values()) == 0  # here the share never pays for a whole tile
    # A longer run earns them: then whole decodes come, each within the share.
    counts, over = _drive(budget, now, batches, 200, 1.6, 1024, per_px, fixed)
    assert sum(counts.values()) > 0 and over <= probe + 1e-9


def test_the_loop_measures_the_cost_on_a_corner_before_any_whole_decode(sd_folder, with_taesd, monkeypatch):
    sizes = []
    rgb = taesd.TinyPreview.rgb
    monkeypatch.setattr(taesd.TinyPreview, "rgb", lambda self, x0: sizes.append(tuple(x0.shape)) or rgb(self, x0))
    events, _ = _run(_request(sd_folder))
    assert sizes[0] == (1, 4, PROBE, PROBE)  # the probe, shown to no one
    shown = [e for e in events if isinstance(e, TilePreview) and e.decoder == "tiny"]
    assert len(shown) == len(sizes) - 1 and all(s == (1, 4, 32, 32) for s in sizes[1:])


def _shown(events) -> tuple[int, dict[tuple[int, int], list[TilePreview]]]:
    """The number of tiles a step, and the previews by (step, tile)."""
    tiles = {len(e.plan.tiles) for e in events if isinstance(e, StepStarted)}
    by: dict[tuple[int, int], list[TilePreview]] = {}
    for e in events:
        if isinstance(e, TilePreview):
            by.setdefault((e.step, e.tile), []).append(e)
    (n,) = tiles
    return n, by


def test_tiles_the_budget_does_not_pay_for_get_the_linear_map(sd_folder, with_taesd, monkeypatch):
    # A budget that pays for no whole decode (a short CPU run): every tile still gets a preview
    # at every step, through the linear map (one colour a latent px: 32² for a 256 px tile).
    monkeypatch.setattr(taesd, "BUDGET", 1e-9)
    events, info = _run(_request(sd_folder, width=384))
    assert info["preview"] == f"tiny autoencoder ({with_taesd})"
    n, by = _shown(events)
    assert n > 1 and set(by) == {(s, i) for s in range(2) for i in range(n)}
    assert all(len(v) == 1 and v[0].decoder == "linear" and v[0].rgb.shape == (32, 32, 3) for v in by.values())


def test_a_tile_keeps_its_tiny_preview_until_it_is_stale(sd_folder, with_taesd, monkeypatch):
    # The budget pays for tile 0 once, at step 0: it shows that sharp preview for STALE_STEPS
    # steps (no blurry one in between), then the linear map takes over; the others are linear throughout.
    monkeypatch.setattr(PreviewBudget, "due", lambda self, tiles, pixels: [
        k for k, i in enumerate(tiles) if i == 0 and not self.made.setdefault(0, 0)])
    steps = STALE_STEPS + 1
    events, _ = _run(_request(sd_folder, width=384, steps=steps))
    n, by = _shown(events)
    kept = [(s, []) for s in range(1, STALE_STEPS)]
    assert [(s, [e.decoder for e in by.get((s, 0), [])]) for s in range(steps)] == \
        [(0, ["tiny"]), *kept] + [(s, ["linear"]) for s in range(STALE_STEPS, steps)]
    assert by[(0, 0)][0].rgb.shape == (256, 256, 3)
    assert all([e.decoder for e in by[(s, i)]] == ["linear"] for s in range(steps) for i in range(1, n))


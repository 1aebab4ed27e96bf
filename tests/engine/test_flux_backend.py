"""The FLUX.1 backend on tiny models through the real loader: one tile equals diffusers' FluxPipeline
(dev-like and schnell-like), image-to-image equals FluxImg2ImgPipeline, the shift is the tile's,
tiles get their canvas positions, fused runs do not depend on the tile batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxImg2ImgPipeline, FluxPipeline
from PIL import Image

from paradiff_gui.engine import GenerationRequest, generate
from paradiff_gui.engine.core.request import RequestError
from paradiff_gui.engine.models import flow
from paradiff_gui.engine.models.registry import load_denoiser

W, H = 128, 96  # image px: one tile of 16x12 latent px, 8x6 tokens
STEPS = 3


@pytest.fixture(scope="module")
def dev_folder(tmp_path_factory):
    from tiny import save
    from tiny_dit import tiny_flux

    return save(tiny_flux(guidance_embeds=True), tmp_path_factory.mktemp("models") / "tiny-flux-dev")


@pytest.fixture(scope="module")
def schnell_folder(tmp_path_factory):
    from tiny import save
    from tiny_dit import tiny_flux

    return save(tiny_flux(guidance_embeds=False, seed=1), tmp_path_factory.mktemp("models") / "tiny-flux-schnell")


def request(folder, **kw):
    fields = dict(model=str(folder), prompt="a red castle", width=W, height=H, tile=512, steps=STEPS,
                  sampler="euler", seed=7, guidance=3.5, device="cpu", fusion="gaussian")
    return GenerationRequest(**{**fields, **kw})


def pipe_of(cls, folder):
    pipe = cls.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_latents(folder, seed, guidance, sequence, **kw):
    """The pipeline's final latents, unpacked to (1, 16, h, w), from the noise Paradiff draws."""
    pipe = pipe_of(FluxPipeline, folder)
    g = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn((1, 16, H // 8, W // 8), generator=g)
    packed = pipe(prompt="a red castle", height=H, width=W, num_inference_steps=STEPS, guidance_scale=guidance,
                  latents=flow.pack(noise), generator=g, output_type="latent", max_sequence_length=sequence,
                  **kw).images
    return flow.unpack(packed, H // 8, W // 8), pipe


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_one_tile_equals_flux_pipeline(variant, dev_folder, schnell_folder):
    folder = dev_folder if variant == "dev" else schnell_folder
    guidance = 3.5 if variant == "dev" else 1.0  # schnell has none (the pipeline ignores it; we refuse others)
    expect, pipe = pipeline_latents(folder, 7, guidance, 512 if variant == "dev" else 256)
    got = generate(request(folder, guidance=guidance))
    assert len(got.plan) == 1
    diff = (got.latents - expect).abs().max().item()
    print(f"flux {variant} one tile: max |diff| {diff:.2e}")
    assert diff < 1e-4
    # The decoded picture too: the pipeline's decode of the same latents.
    z = expect / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    with torch.no_grad():
        image = pipe.image_processor.postprocess(pipe.vae.decode(z, return_dict=False)[0], output_type="np")[0]
    assert np.abs(got.image.astype(int) - np.round(image * 255).astype(int)).max() <= 1


def test_guidance_for_schnell_is_refused_by_name(schnell_folder):
    with pytest.raises(RequestError) as e:
        generate(request(schnell_folder, guidance=3.5))
    assert e.value.field == "guidance" and "schnell has no guidance" in e.value.message
    assert "use guidance 1" in e.value.message


@pytest.fixture(scope="module")
def init_png(tmp_path_factory):
    g = np.random.default_rng(4)
    small = (g.random((6, 8, 3)) * 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("init") / "init.png"
    Image.fromarray(small).resize((W, H), Image.Resampling.BICUBIC).save(path)
    return path


def test_image_to_image_equals_flux_img2img_pipeline(dev_folder, init_png):
    got = generate(request(dev_folder, init_image=str(init_png), strength=0.5, steps=4))
    den = load_denoiser(request(dev_folder), torch.device("cpu"), torch.float32)
    with Image.open(init_png) as im:
        pixels = np.asarray(im, dtype=np.float32) / 255
    init = den.encode(pixels, lambda d, n: None)
    pipe = pipe_of(FluxImg2ImgPipeline, dev_folder)
    # 16-channel "images" are taken as latents by the pipeline; its noise comes from the same seed.
    packed = pipe(prompt="a red castle", image=init, strength=0.5, num_inference_steps=4, guidance_scale=3.5,
                  height=H, width=W, generator=torch.Generator("cpu").manual_seed(7), output_type="latent").images
    diff = (got.latents - flow.unpack(packed, H // 8, W // 8)).abs().max().item()
    print(f"flux img2img: max |diff| {diff:.2e}")
    assert diff < 1e-4
    assert got.info["strength"] == 0.5


def test_the_schedule_is_the_pipelines_for_a_picture_of_the_tiles_size(dev_folder, monkeypatch):
    from diffusers import FlowMatchEulerDiscreteScheduler

    seen = []
    original = FlowMatchEulerDiscreteScheduler.set_timesteps

    def spy(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
        original(self, num_inference_steps, device, sigmas, mu, timesteps)
        seen.append((mu, self.sigmas.clone()))

    monkeypatch.setattr(FlowMatchEulerDiscreteScheduler, "set_timesteps", spy)
    # A 256x192 canvas of 128x96 px tiles (2x2): the model sees 8x6 tokens, never the canvas's 16x12.
    generate(request(dev_folder, width=256, height=192, grid=(2, 2), tile=None, overlap=0, steps=2), previews=False)
    run = seen[-1]
    seen.clear()
    pipe = pipe_of(FluxPipeline, dev_folder)
    pipe(prompt="a", height=96, width=128, num_inference_steps=2, output_type="latent", max_sequence_length=8)
    tile_mu, tile_sigmas = seen[-1]
    assert run[0] == pytest.approx(tile_mu)
    torch.testing.assert_close(run[1], tile_sigmas)
    assert tile_mu == pytest.approx(flow.dynamic_mu(pipe.scheduler.config, 8 * 6))
    # The canvas's token count would give another schedule (small here: 48 against 192 tokens).
    assert flow.dynamic_mu(pipe.scheduler.config, 16 * 12) > tile_mu + 0.02


def _spy_ids(monkeypatch):
    from diffusers import FluxTransformer2DModel

    calls = []
    original = FluxTransformer2DModel.forward

    def spy(self, hidden_states, *args, img_ids=None, **kw):
        calls.append((hidden_states.shape[0], img_ids.clone()))
        return original(self, hidden_states, *args, img_ids=img_ids, **kw)

    monkeypatch.setattr(FluxTransformer2DModel, "forward", spy)
    return calls


def test_canvas_positions_move_each_tiles_rotary_ids_and_a_batch_keeps_each_tiles_own(dev_folder, monkeypatch):
    calls = _spy_ids(monkeypatch)
    # 2x2 tiles of 64 px (8x8 latent px, 4x4 tokens), overlap 0: tiles start at 0 and 8 latent px.
    kw = dict(width=128, height=128, tile=64, overlap=0, steps=1)
    alone = generate(request(dev_folder, positions="canvas", tile_batch=1, **kw), previews=False)
    assert len(alone.plan) == 4 and len(calls) == 4  # one tile per call: the transformer's own positions
    for (batch, ids), tile in zip(calls, alone.plan.tiles):
        assert batch == 1
        grid = ids.reshape(4, 4, 3)
        assert (grid[..., 0] == 0).all()
        assert grid[:, 0, 1].tolist() == [tile.y0 // 2 + i for i in range(4)]
        assert grid[0, :, 2].tolist() == [tile.x0 // 2 + j for j in range(4)]
    assert {(t.y0 // 2, t.x0 // 2) for t in alone.plan.tiles} == {(0, 0), (0, 4), (4, 0), (4, 4)}
    calls.clear()
    # All four in one call: each row gets its own rotary positions (the opened attention), so the
    # batch computes what the four calls computed.
    batched = generate(request(dev_folder, positions="canvas", tile_batch=4, **kw), previews=False)
    assert [b for b, _ in calls] == [4]
    diff = (batched.latents - alone.latents).abs().max().item()
    print(f"canvas positions, one call of 4 tiles vs 4 calls: max |diff| {diff:.1e}")
    assert diff < 1e-5
    calls.clear()
    generate(request(dev_folder, positions="local", tile_batch=4, **kw), previews=False)
    (batch, ids), = calls  # local: all four tiles in one call, every one from the origin
    assert batch == 4 and ids.reshape(4, 4, 3)[0, 0].tolist() == [0, 0, 0]


@pytest.mark.parametrize("positions", ["local", "canvas"])
def test_fused_runs_are_deterministic_and_independent_of_the_tile_batch(dev_folder, positions):
    den = load_denoiser(request(dev_folder), torch.device("cpu"), torch.float32)
    kw = dict(width=192, height=128, tile=96, overlap=32, steps=2, positions=positions)
    one = generate(request(dev_folder, tile_batch=1, **kw), denoiser=den, previews=False)
    assert len(one.plan) >= 4
    every = generate(request(dev_folder, tile_batch=len(one.plan), **kw), denoiser=den, previews=False)
    again = generate(request(dev_folder, tile_batch=len(one.plan), **kw), denoiser=den, previews=False)
    diff = (one.latents - every.latents).abs().max().item()
    print(f"flux {positions}: tile_batch 1 vs all: max |diff| {diff:.2e}")
    assert diff < 1e-5
    assert torch.equal(every.latents, again.latents)


def test_canvas_and_local_positions_differ_on_several_tiles_and_agree_on_one(dev_folder):
    den = load_denoiser(request(dev_folder), torch.device("cpu"), torch.float32)
    kw = dict(width=128, height=128, tile=64, overlap=0, steps=1)
    a = generate(request(dev_folder, positions="local", **kw), denoiser=den, previews=False)
    b = generate(request(dev_folder, positions="canvas", **kw), denoiser=den, previews=False)
    assert (a.latents - b.latents).abs().max() > 1e-3
    one = dict(width=W, height=H, steps=1)
    torch.testing.assert_close(generate(request(dev_folder, positions="local", **one), denoiser=den).latents,
                               generate(request(dev_folder, positions="canvas", **one), denoiser=den).latents)


@pytest.mark.parametrize(("kw", "field"), [
    (dict(tile=120, overlap=16), "tile"),
    (dict(width=136, tile=64), "width"),
    (dict(width=208, tile=None, grid=(1, 3), overlap=0), "grid"),  # 26 latent px in 3: tiles of 9
])
def test_tiles_must_be_whole_patches(dev_folder, kw, field):
    from paradiff_gui.engine.core.request import RequestError

    den = load_denoiser(request(dev_folder), torch.device("cpu"), torch.float32)
    with pytest.raises(RequestError) as err:
        generate(request(dev_folder, steps=1, **kw), denoiser=den)
    assert err.value.field == field and "multiple of 16" in err.value.message


def test_tiles_at_odd_latent_px_get_half_token_positions(dev_folder, monkeypatch):
    # 400 px = 50 latent px in tiles of 16 latent px, overlap 3: four tiles spread evenly start at 0, 11,
    # 23 and 34 latent px — two of them half way through a token.
    calls = _spy_ids(monkeypatch)
    # (One tile per call, so each call's img_ids are one tile's; a batch takes the same positions per
    # row, test_canvas_positions_move_each_tiles_rotary_ids_and_a_batch_keeps_each_tiles_own.)
    res = generate(request(dev_folder, width=400, height=64, tile=128, overlap=24, steps=1, positions="canvas",
                           tile_batch=1), previews=False)
    assert len(calls) == len(res.plan.tiles)
    starts = [t.x0 for t in res.plan.tiles]
    assert any(x % 2 for x in starts), starts
    for (_, ids), tile in zip(calls, res.plan.tiles):
        assert ids[0, 2].item() == tile.x0 / 2

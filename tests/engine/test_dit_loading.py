"""Loading FLUX and SD3 models: dispatch by the folder's pipeline class, a single-file transformer with
the rest from a folder, and clear refusals for half a folder or a file of another architecture."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from paradiff_gui.engine import GenerationRequest, generate
from paradiff_gui.engine.models.base import ModelUnavailable
from paradiff_gui.engine.models.flow import checkpoint_kind
from paradiff_gui.engine.models.registry import clear_cache, load_denoiser

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from tiny import save
    from tiny_dit import tiny_flux, tiny_sd3

    root = tmp_path_factory.mktemp("models")
    flux = tiny_flux()
    sd3 = tiny_sd3()
    out = {"flux": save(flux, root / "flux"), "sd3": save(sd3, root / "sd3")}
    for kind, pipe in (("flux", flux), ("sd3", sd3)):
        file = root / f"{kind}-transformer.safetensors"
        save_file({k: v.contiguous() for k, v in pipe.transformer.state_dict().items()}, str(file))
        out[f"{kind}-file"] = file
        # The rest of the model as people keep it next to a single-file transformer: every component,
        # and of the transformer only its config.
        rest = root / f"{kind}-rest"
        shutil.copytree(out[kind], rest)
        for f in (rest / "transformer").glob("*.safetensors"):
            f.unlink()
        out[f"{kind}-rest"] = rest
    return out


def request(model, **kw):
    return GenerationRequest(**{**dict(model=str(model), prompt="a red castle", width=128, height=96, tile=512,
                                       steps=2, sampler="euler", seed=3, device="cpu"), **kw})


def test_the_folders_pipeline_class_picks_the_backend(folders):
    from paradiff_gui.engine.models.flux.backend import FluxDenoiser
    from paradiff_gui.engine.models.sd3.backend import SD3Denoiser

    clear_cache()
    assert isinstance(load_denoiser(request(folders["flux"]), CPU, torch.float32), FluxDenoiser)
    assert isinstance(load_denoiser(request(folders["sd3"]), CPU, torch.float32), SD3Denoiser)
    clear_cache()


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_a_single_file_transformer_with_the_rest_from_a_folder(folders, kind):
    whole = generate(request(folders[kind]), previews=False)
    split = generate(request(folders[f"{kind}-rest"], transformer=str(folders[f"{kind}-file"])), previews=False)
    torch.testing.assert_close(split.latents, whole.latents, rtol=0, atol=0)
    assert split.info["model_name"].endswith(f"+ {kind}-transformer.safetensors")
    clear_cache()


def test_checkpoint_kinds(folders):
    assert checkpoint_kind(folders["flux-file"]) == "flux"
    assert checkpoint_kind(folders["sd3-file"]) == "sd3"


def test_a_transformer_of_another_architecture_is_refused_by_name(folders):
    with pytest.raises(ModelUnavailable) as err:
        load_denoiser(request(folders["flux-rest"], transformer=str(folders["sd3-file"])), CPU, torch.float32)
    msg = str(err.value)
    assert msg.startswith("transformer: sd3-transformer.safetensors holds an SD3 transformer, not a FLUX.1")


def test_the_folder_without_its_transformer_weights_needs_the_file(folders):
    with pytest.raises(ModelUnavailable) as err:
        load_denoiser(request(folders["flux-rest"]), CPU, torch.float32)
    assert "flux-rest" in str(err.value)


def test_half_a_folder_is_refused_naming_what_is_missing(folders, tmp_path):
    half = tmp_path / "half-flux"
    shutil.copytree(folders["flux"], half)
    shutil.rmtree(half / "vae")
    shutil.rmtree(half / "text_encoder_2")
    with pytest.raises(ModelUnavailable) as err:
        load_denoiser(request(half), CPU, torch.float32)
    assert "without vae/, text_encoder_2/" in str(err.value) and str(half) in str(err.value)


def test_a_transformer_file_alone_as_the_model_says_what_would_work(folders):
    with pytest.raises(ModelUnavailable) as err:
        load_denoiser(request(folders["flux-file"]), CPU, torch.float32)
    assert "holds a FLUX.1 transformer alone" in str(err.value) and "--transformer" in str(err.value)


def test_a_transformer_file_for_an_sd_model_is_refused(folders, sd_folder):
    with pytest.raises(ModelUnavailable) as err:
        load_denoiser(request(sd_folder, transformer=str(folders["flux-file"])), CPU, torch.float32)
    assert str(err.value).startswith("transformer: a single-file transformer goes with a FLUX.1 or SD3 model folder")

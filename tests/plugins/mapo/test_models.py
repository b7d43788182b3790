"""The diffusion loader: the offline tiny-sdxl preset, local diffusers folders (SDXL and SD-1.x), clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from lmlab.core.kernel.errors import ModelError
from lmlab.plugins.mapo import models
from lmlab.plugins.mapo.models import DiffusionParts, load_diffusion, write_tiny_diffusion


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LMLAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def tiny(home: Path) -> DiffusionParts:
    return load_diffusion("tiny-sdxl")


def sample(parts: DiffusionParts) -> Image.Image:
    pipe = parts.pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt="a red circle", num_inference_steps=2, height=64, width=64,
                generator=torch.Generator().manual_seed(0), output_type="pil").images[0]


def test_tiny_sdxl_is_built_once_atomically_and_reloaded_from_cache(home: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    parts = load_diffusion("tiny-sdxl")
    folder = home / "models" / "tiny-sdxl"
    assert parts.source == "tiny-sdxl"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*models.BASE_PARTS, *models.SDXL_PARTS, "model_index.json"])
    assert [p.name for p in folder.parent.iterdir()] == ["tiny-sdxl"]  # no temp siblings left behind
    stamp = folder.stat().st_mtime_ns

    def rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("tiny-sdxl was rebuilt although it is cached")

    monkeypatch.setattr(models, "write_tiny_diffusion", rebuild)
    again = load_diffusion("tiny-sdxl")
    assert folder.stat().st_mtime_ns == stamp
    for name, tensor in parts.unet.state_dict().items():  # same seed-0 weights both times
        assert torch.equal(tensor, again.unet.state_dict()[name])


def test_tiny_sdxl_components_have_the_sdxl_shape(tiny: DiffusionParts) -> None:
    unet, te1, te2 = tiny.unet.config, tiny.text_encoder.config, tiny.text_encoder_2.config
    assert tiny.is_sdxl and tiny.prediction_type == "epsilon"
    assert te1.hidden_size == te2.hidden_size == te2.projection_dim == 32
    assert unet.cross_attention_dim == te1.hidden_size + te2.hidden_size == 64
    assert unet.addition_embed_type == "text_time" and unet.addition_time_embed_dim == 8
    assert unet.projection_class_embeddings_input_dim == te2.projection_dim + 6 * unet.addition_time_embed_dim == 80
    assert unet.sample_size * 2 ** (len(tiny.vae.config.block_out_channels) - 1) == 64
    assert tiny.vae.config.latent_channels == unet.in_channels == 4
    assert tiny.noise_scheduler.config.num_train_timesteps == 1000
    assert tiny.noise_scheduler.config.beta_schedule == "scaled_linear"
    for config, tokenizer in ((te1, tiny.tokenizer), (te2, tiny.tokenizer_2)):
        assert config.vocab_size == len(tokenizer)
        assert (config.bos_token_id, config.eos_token_id) == (tokenizer.bos_token_id, tokenizer.eos_token_id)
        assert config.eos_token_id != 2
    for module in (tiny.unet, tiny.vae, tiny.text_encoder, tiny.text_encoder_2):
        assert all(p.dtype == torch.float32 for p in module.parameters())
    for frozen in (tiny.vae, tiny.text_encoder, tiny.text_encoder_2):
        assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in tiny.unet.parameters())


def test_tiny_tokenizer_round_trips_a_caption(tiny: DiffusionParts) -> None:
    caption = "a cartoon fox, 3 stars & a moon!"
    for tokenizer in (tiny.tokenizer, tiny.tokenizer_2):
        ids = tokenizer(caption, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True).input_ids
        assert tokenizer.model_max_length == len(ids) == 77
        assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id in ids
        assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == caption.replace(" ", "")
    # pooling finds the EOS: different captions give different pooled embeddings
    batch = tiny.tokenizer_2(["a red circle", "a blue square"], padding="max_length", return_tensors="pt")
    pooled = tiny.text_encoder_2(batch.input_ids).text_embeds
    assert pooled.shape == (2, 32) and not torch.allclose(pooled[0], pooled[1])


def test_tiny_sdxl_pipeline_makes_a_64px_image(tiny: DiffusionParts) -> None:
    image = sample(tiny)
    assert isinstance(image, Image.Image) and image.size == (64, 64)


def test_folder_missing_unet_is_named(tmp_path: Path) -> None:
    folder = write_tiny_diffusion(tmp_path / "model", sdxl=True)
    shutil.rmtree(folder / "unet")
    with pytest.raises(ModelError, match="unet"):
        load_diffusion(str(folder))


def test_sdxl_folder_missing_second_encoder_is_named(tmp_path: Path) -> None:
    folder = write_tiny_diffusion(tmp_path / "model", sdxl=True)
    shutil.rmtree(folder / "text_encoder_2")
    with pytest.raises(ModelError, match="text_encoder_2"):
        load_diffusion(str(folder))


def test_sd1_style_folder_loads_with_one_encoder(tmp_path: Path) -> None:
    folder = write_tiny_diffusion(tmp_path / "sd1", sdxl=False)
    parts = load_diffusion(str(folder))
    assert parts.is_sdxl is False and parts.text_encoder_2 is None and parts.tokenizer_2 is None
    assert parts.unet.config.cross_attention_dim == parts.text_encoder.config.hidden_size == 32
    assert parts.unet.config.addition_embed_type is None
    assert type(parts.pipeline()).__name__ == "StableDiffusionPipeline"
    assert sample(parts).size == (64, 64)


def test_unknown_spec_and_unreachable_hub_id_are_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelError, match="Unknown diffusion model 'no-such-model'"):
        load_diffusion("no-such-model")

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(models.UNet2DConditionModel, "from_pretrained", offline)
    with pytest.raises(ModelError, match="nobody/nothing") as caught:
        load_diffusion("nobody/nothing")
    assert caught.value.hint is not None and "tiny-sdxl" in caught.value.hint

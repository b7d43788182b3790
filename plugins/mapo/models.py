"""Load a text-to-image diffusion model (SDXL or SD-1.x layout) for MaPO, or build the offline `tiny-sdxl` preset:
SDXL's component set at toy size with random weights (seed 0) and a character-level CLIP tokenizer, written once in
diffusers layout under `cache_dir()/models/tiny-sdxl` and then loaded like any local folder."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from lmlab.core.files.atomic import atomic_dir
from lmlab.core.kernel.errors import ModelError
from lmlab.core.models.loading import cache_dir

PRESETS = ("tiny-sdxl",)
BASE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_PARTS = ("text_encoder_2", "tokenizer_2")
TEXT_HIDDEN = 32


@dataclass
class DiffusionParts:
    """The components MaPO needs; only the UNet is meant to train (VAE and text encoders are frozen)."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    text_encoder_2: CLIPTextModelWithProjection | None
    tokenizer_2: CLIPTokenizer | None
    noise_scheduler: DDPMScheduler
    source: str

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def prediction_type(self) -> str:
        return str(self.noise_scheduler.config.prediction_type)

    def pipeline(self) -> DiffusionPipeline:
        """A sampling pipeline sharing these modules, with an Euler scheduler from the same scheduler config."""
        scheduler = EulerDiscreteScheduler.from_config(self.noise_scheduler.config)
        if self.is_sdxl:
            return StableDiffusionXLPipeline(
                vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
                tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, unet=self.unet, scheduler=scheduler,
                add_watermarker=False)
        return StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def load_diffusion(spec: str, *, trust_remote_code: bool = False) -> DiffusionParts:
    """Load `tiny-sdxl`, a local diffusers folder, or a Hub id (owner/name), all in float32. `trust_remote_code` is
    accepted for symmetry with `load_model`; the fixed CLIP/UNet/VAE classes never run it."""
    if spec in PRESETS:
        return _load(str(tiny_sdxl_folder()), source=spec, sdxl=None)
    path = Path(spec).expanduser()
    if path.exists():
        return _load(str(path), source=spec, sdxl=_check_folder(path))
    if spec.count("/") != 1:
        raise ModelError(f"Unknown diffusion model '{spec}': not a preset, a local diffusers folder, or a Hub id "
                         "(owner/name).", hint=f"presets: {', '.join(PRESETS)}")
    try:
        return _load(spec, source=spec, sdxl=None)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"Could not load diffusion model '{spec}' from the Hub ({reason}).",
                         hint="no network here? use a local diffusers folder or the offline preset tiny-sdxl") from exc


def _check_folder(path: Path) -> bool:
    """Name the first missing subfolder; return whether the folder is SDXL-style (two text encoders)."""
    if not path.is_dir():
        raise ModelError(f"{path}: not a directory, so it is not a diffusers model folder.")
    missing = [name for name in BASE_PARTS if not (path / name).is_dir()]
    unet_config = path / "unet" / "config.json"
    sdxl = (path / "text_encoder_2").is_dir()
    if not missing and unet_config.exists():
        sdxl = sdxl or json.loads(unet_config.read_text()).get("addition_embed_type") == "text_time"
    if sdxl:
        missing += [name for name in SDXL_PARTS if not (path / name).is_dir()]
    if missing:
        raise ModelError(f"{path}: diffusers folder is missing the subfolder(s) {', '.join(missing)}.",
                         hint="expected unet/, vae/, text_encoder/, tokenizer/, scheduler/ (and text_encoder_2/, "
                              "tokenizer_2/ for SDXL), as written by DiffusionPipeline.save_pretrained")
    return sdxl


def _load(where: str, *, source: str, sdxl: bool | None) -> DiffusionParts:
    """The same `from_pretrained(where, subfolder=...)` calls for folders and Hub ids; `sdxl=None` asks the UNet."""
    dtype = torch.float32
    unet = UNet2DConditionModel.from_pretrained(where, subfolder="unet", torch_dtype=dtype)
    if sdxl is None:
        sdxl = unet.config.addition_embed_type == "text_time"
    vae = AutoencoderKL.from_pretrained(where, subfolder="vae", torch_dtype=dtype)
    text_encoder = CLIPTextModel.from_pretrained(where, subfolder="text_encoder", dtype=dtype)
    tokenizer = CLIPTokenizer.from_pretrained(where, subfolder="tokenizer")
    text_encoder_2 = tokenizer_2 = None
    if sdxl:
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(where, subfolder="text_encoder_2", dtype=dtype)
        tokenizer_2 = CLIPTokenizer.from_pretrained(where, subfolder="tokenizer_2")
    for frozen in (vae, text_encoder, text_encoder_2):
        if frozen is not None:
            frozen.requires_grad_(False).eval()
    noise_scheduler = DDPMScheduler.from_pretrained(where, subfolder="scheduler")
    return DiffusionParts(unet, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, noise_scheduler, source)


def tiny_sdxl_folder() -> Path:
    """Build the preset once (atomically) and return its folder."""
    target = cache_dir() / "models" / "tiny-sdxl"
    if not target.exists():
        atomic_dir(target, lambda tmp: write_tiny_diffusion(tmp, sdxl=True, seed=0))
    return target


def tiny_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer (no merges): 256 bytes, 256 word-final bytes, BOS, EOS = 514 ids; the
    bytes as GPT-2/CLIP's reversible map writes them (printable ones as themselves, then the rest from chr(256))."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [*map(chr, printable), *(chr(256 + i) for i in range(256 - len(printable)))]
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=77)


def tiny_unet(*, sdxl: bool) -> UNet2DConditionModel:
    """SDXL: cross-attention over both encoders (32 + 32) plus text_time conditioning; SD-1.x: one encoder."""
    extra = {"addition_embed_type": "text_time", "addition_time_embed_dim": 8,
             "projection_class_embeddings_input_dim": TEXT_HIDDEN + 6 * 8} if sdxl else {}
    return UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), transformer_layers_per_block=1, norm_num_groups=8, use_linear_projection=True,
        cross_attention_dim=2 * TEXT_HIDDEN if sdxl else TEXT_HIDDEN, **extra)


def tiny_vae(*, sdxl: bool) -> AutoencoderKL:
    """Two blocks: 64x64 images <-> 4x32x32 latents."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), latent_channels=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        scaling_factor=0.13025 if sdxl else 0.18215)


def tiny_scheduler() -> EulerDiscreteScheduler:
    """SDXL's scheduler settings (scaled_linear betas, epsilon, 1000 steps), stored as SDXL stores them."""
    return EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", steps_offset=1, timestep_spacing="leading")


def write_tiny_diffusion(folder: Path, *, sdxl: bool = True, seed: int = 0) -> Path:
    """Write a random-init tiny pipeline (SDXL or SD-1.x style) in diffusers layout into `folder`."""
    tokenizer = tiny_tokenizer()
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, projection_dim=TEXT_HIDDEN,
        hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet, vae = tiny_unet(sdxl=sdxl), tiny_vae(sdxl=sdxl)
        text_encoder = CLIPTextModel(config)
        text_encoder_2 = CLIPTextModelWithProjection(config) if sdxl else None
    parts = DiffusionParts(unet, vae, text_encoder, tokenizer, text_encoder_2, tokenizer if sdxl else None,
                           DDPMScheduler.from_config(tiny_scheduler().config), source="tiny")
    pipe = parts.pipeline()
    pipe.scheduler = tiny_scheduler()
    pipe.save_pretrained(str(folder))
    return folder

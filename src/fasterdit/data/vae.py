"""The Stable-Diffusion VAE: loading, encoding to the latent distribution, decoding back to images.

DiT and FasterDiT train in the latent space of a diffusers ``AutoencoderKL`` (``stabilityai/sd-vae-ft-ema``
or ``-mse``: 4 channels, 8x downsampling). Two conventions fixed here, used by ``fasterdit prepare``,
the prepared-shard reader and ``fasterdit sample``:

* We keep the encoder's **distribution** ``(mean, logvar)`` raw (unscaled), so training can draw a
  fresh latent every time it sees an image, as the official DiT does with ``latent_dist.sample()``.
* The model sees **scaled** latents ``z = (latent - shift_factor) · scaling_factor``
  (``scaling_factor = 0.18215``, ``shift_factor = 0`` for SD VAEs; newer VAEs such as SD3's carry a
  shift in their config), which makes the latents' std about 1. :func:`decode` undoes exactly this.

Besides hub ids and folders, a VAE can be named by a built-in short name: ``mnist-ae`` is the small KL
autoencoder that ships inside the package (:mod:`fasterdit.data.autoencoder`), so the whole latent path
runs offline on a laptop. Runs and manifests record the short name, not the install path.

diffusers is an optional dependency (``pip install "fasterdit[vae]"``); it is imported on first use.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fasterdit.data.autoencoder import BUILTIN, builtin_path
from fasterdit.data.embedded import center_crop_images
from fasterdit.errors import ConfigError, DataError, UserError

# Short names accepted for the two VAEs the DiT paper uses (as the official DiT sample.py's --vae).
ALIASES = {"ema": "stabilityai/sd-vae-ft-ema", "mse": "stabilityai/sd-vae-ft-mse"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SD_SCALING_FACTOR = 0.18215


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"fp32" | "bf16" | "fp16"`` (or a torch dtype) -> torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ConfigError("dtype", f"must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _autoencoder_class():
    try:  # lazy: diffusers is the optional "fasterdit[vae]" extra, and ~3.4 s to import
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise UserError(
            "VAE latents need the 'diffusers' package: pip install 'fasterdit[vae]' (or diffusers)"
        ) from err
    return AutoencoderKL


def vae_record_name(id_or_path: str | Path) -> str:
    """How a run or a manifest records a VAE: built-in short names as they are, ``ema``/``mse`` as their
    hub ids, hub ids as they are, and existing folders as absolute paths."""
    name = str(id_or_path)
    if name in BUILTIN:
        return name
    name = ALIASES.get(name, name)
    local = Path(name).expanduser()
    return str(local.resolve()) if local.exists() else name


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or (len(name) > 1 and name[1] == ":")


def load_vae(
    id_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32
):
    """A diffusers ``AutoencoderKL`` in eval mode with frozen weights.

    ``id_or_path``: a local folder written by ``save_pretrained`` (or a full Stable-Diffusion pipeline
    folder with a ``vae/`` sub-folder), a Hugging Face hub id such as ``stabilityai/sd-vae-ft-ema``
    (downloaded once into the hub cache by diffusers), the short names ``ema`` / ``mse``, or a built-in
    name (``mnist-ae``).
    """
    cls = _autoencoder_class()
    dtype = parse_dtype(dtype)
    name = str(id_or_path)
    name = ALIASES.get(name, name)
    builtin = builtin_path(name)
    if builtin is not None and not (builtin / "config.json").is_file():
        raise DataError(
            f"the built-in autoencoder {name!r} is missing from this install ({builtin}); "
            "rebuild it with scripts/train_autoencoder.py"
        )
    local = builtin if builtin is not None else Path(name).expanduser()
    kwargs: dict[str, Any] = {"torch_dtype": dtype}
    if importlib.util.find_spec("accelerate") is None:
        kwargs["low_cpu_mem_usage"] = False  # what diffusers falls back to anyway, minus its warning
    if local.exists():
        if not local.is_dir():
            raise DataError(f"{local}: a VAE must be a folder with config.json and the weights, not a file")
        if (local / "config.json").is_file():
            source = str(local)
        elif (local / "vae" / "config.json").is_file():
            source, kwargs["subfolder"] = str(local), "vae"
        else:
            raise DataError(f"{local}: no config.json (nor vae/config.json); not a diffusers VAE folder")
        try:
            vae = cls.from_pretrained(source, **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise DataError(f"{local}: cannot load the VAE ({type(err).__name__}: {err})") from None
    elif _looks_like_path(name):
        raise DataError(f"VAE folder not found: {local}")
    else:
        try:
            vae = cls.from_pretrained(name, **kwargs)
        except (OSError, ValueError) as err:
            raise UserError(
                f"cannot load the VAE {name!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
                "Check the id and the network, or download it once and pass the local folder."
            ) from None
    vae = vae.to(device=device)
    vae.eval()
    vae.requires_grad_(False)
    return vae


def vae_scaling_factor(vae) -> float:
    """Brings raw latents to about unit std: ``vae.config.scaling_factor`` (0.18215 for SD VAEs)."""
    value = getattr(vae.config, "scaling_factor", None)
    return float(SD_SCALING_FACTOR if value is None else value)


def vae_shift_factor(vae) -> float:
    """The offset subtracted before scaling (``vae.config.shift_factor``; 0 for SD VAEs, which have none)."""
    value = getattr(vae.config, "shift_factor", None)
    return float(0.0 if value is None else value)


def vae_downsample_factor(vae) -> int:
    """Pixels per latent along one side: 2^(number of encoder blocks - 1); 8 for SD VAEs."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _vae_device_dtype(vae) -> tuple[torch.device, torch.dtype]:
    p = next(vae.parameters())
    return p.device, p.dtype


def _check_finite(t: torch.Tensor, what: str, dtype: torch.dtype) -> None:
    if not torch.isfinite(t).all():
        hint = " (half precision overflows in some VAEs: use fp32 or bf16)" if dtype == torch.float16 else ""
        raise UserError(f"the VAE produced NaN or infinite values while {what}{hint}")


@torch.no_grad()
def encode_distribution(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode images ``(B, 3, H, W)`` in [-1, 1]: the raw, unscaled posterior ``(mean, logvar)``,
    each ``(B, C, H/f, W/f)`` float32 on the VAE's device (``logvar`` clamped to [-30, 20] by diffusers)."""
    device, dtype = _vae_device_dtype(vae)
    dist = vae.encode(images.to(device=device, dtype=dtype)).latent_dist
    mean, logvar = dist.mean.float(), dist.logvar.float()
    _check_finite(mean, "encoding", dtype)
    _check_finite(logvar, "encoding", dtype)
    return mean, logvar


@torch.no_grad()
def decode(vae, latents_scaled: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Decode scaled latents (what the model generates) to images in [-1, 1], float32 ``(B, 3, H, W)``
    on the VAE's device. Undoes the scaling: ``latent = z / scaling_factor + shift_factor``.
    ``batch_size`` bounds the memory of the decoder (which is heavier than the DiT at 256 px)."""
    device, dtype = _vae_device_dtype(vae)
    scale, shift = vae_scaling_factor(vae), vae_shift_factor(vae)
    z = latents_scaled.to(device=device, dtype=torch.float32) / scale + shift
    step = batch_size or max(1, z.shape[0])
    out = [vae.decode(z[i : i + step].to(dtype)).sample.float() for i in range(0, z.shape[0], step)]
    images = torch.cat(out) if out else z.new_zeros((0, 3, 0, 0))
    _check_finite(images, "decoding", dtype)
    return images.clamp_(-1.0, 1.0)


def latent_decoder(
    vae_id: str, device: str | torch.device, crop: int | None = None, batch_size: int = 32
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``z -> images``: what sampling, grids and evaluation use to bring a latent model's samples to pixels.

    ``crop``: the side of the source images when the autoencoder saw them padded (the embedded 28x28
    digits on a 32x32 canvas for ``mnist-ae``): the decoded images are cropped back to it, so that their
    samples are the dataset's own geometry and the dataset's classifier scores them."""
    vae = load_vae(vae_id, device=device)

    def to_pixels(z: torch.Tensor) -> torch.Tensor:
        images = decode(vae, z, batch_size=min(batch_size, max(1, z.shape[0])))
        return images if crop is None else center_crop_images(images, crop)

    return to_pixels

"""Load any open_clip checkpoint for evaluation and embed images with it.

Works for this project's runs and for a user's own checkpoint alike: the architecture is an
open_clip model name (ours are registered first), the weights a file read with
``weights_only=True``. A checkpoint that does not fit the named architecture is refused
instead of being resized or partly loaded, since the numbers would describe another model.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from poisonclip.contracts import RUN_INFO_FILE, read_run_info
from poisonclip.errors import SettingError, UserError
from poisonclip.io_utils import sha256_file

@dataclass(frozen=True)
class LoadedModel:
    model: Any              # open_clip CLIP / CustomTextCLIP in eval mode
    preprocess: Callable[[Image.Image], Any]   # the model's validation transform
    tokenizer: Any
    name: str
    checkpoint: Path
    checkpoint_sha256: str
    device: str


def resolve_run(run_dir: str | os.PathLike) -> tuple[str, Path]:
    """(model name, checkpoint path) from a run folder's run.json."""
    info = read_run_info(Path(run_dir) / RUN_INFO_FILE)
    ckpt = info.checkpoint_path()
    missing = [k for k, v in (("model", info.model), ("checkpoint", ckpt)) if not v]
    if missing:
        raise UserError(f"{info.path}: no {' or '.join(missing)} recorded (did training finish?); "
                        "give the model name and checkpoint instead")
    assert ckpt is not None
    return info.model, ckpt


def load_model(name: str, checkpoint: str | os.PathLike, device: str = "cpu") -> LoadedModel:
    """Build ``name`` (an open_clip model name; this project's configs are registered first)
    without weights, then load ``checkpoint`` strictly."""
    import open_clip

    from poisonclip.train.models import check_fits, quiet_random_init, read_state_dict, register_models

    register_models()
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; pass the .pt file written by training "
                        "(open_clip_train saves logs/<name>/checkpoints/epoch_<n>.pt)")
    if ":" not in name and open_clip.get_model_config(name) is None:
        ours = ", ".join(register_models())
        raise SettingError("model", f"{name!r}: not an open_clip model name; this project's are {ours}, "
                           "see open_clip.list_models() for the rest")
    try:
        with quiet_random_init():
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=None, device=device, pretrained_text=False)
    except RuntimeError as e:
        raise SettingError("model", f"{name!r}: open_clip cannot build it ({str(e).splitlines()[0]})") from None
    sd = read_state_dict(path)
    check_fits(model, sd, name, path)
    try:
        open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True, device=device)
    except RuntimeError as e:
        own = set(model.state_dict())
        missing, extra = sorted(own - set(sd)), sorted(set(sd) - own)
        detail = (f"{len(missing)} model tensor(s) missing (e.g. {missing[:1]}), "
                  f"{len(extra)} unexpected (e.g. {extra[:1]})") if (missing or extra) else str(e).splitlines()[0]
        raise UserError(f"{path}: does not fit model {name!r}: {detail}; "
                        "pass the --model the checkpoint was trained with") from None
    model.eval()
    return LoadedModel(model, preprocess, open_clip.get_tokenizer(name), name, path.resolve(),
                       sha256_file(path), device)


InputTrigger = Callable[[Image.Image, int], Image.Image]


def split_preprocess(preprocess: Callable[[Image.Image], Any]) -> tuple[Callable[[Image.Image], Image.Image],
                                                                       Callable[[Image.Image], Any]]:
    """(geometry, to_tensor): the validation transform cut where the PIL image becomes a tensor.

    ``geometry`` (open_clip: resize, centre crop, RGB) yields the model-input image a trigger
    is pasted on; ``to_tensor`` (ToTensor, Normalize) the rest. Cutting open_clip's own
    Compose keeps its interpolation and crop exactly, instead of re-implementing them.
    """
    from torchvision import transforms as T

    steps = getattr(preprocess, "transforms", None)
    cut = next((i for i, t in enumerate(steps or ()) if isinstance(t, (T.ToTensor, T.PILToTensor))), None)
    if cut is None:
        raise ValueError("the model's preprocessing is not a torchvision Compose with a ToTensor step; "
                         "a trigger cannot be applied in its input space")
    return T.Compose(steps[:cut]), T.Compose(steps[cut:])


def input_size(loaded: LoadedModel) -> int:
    """Side of the square image the model's validation transform hands to the model."""
    geometry, _ = split_preprocess(loaded.preprocess)
    return min(geometry(Image.new("RGB", (7, 5))).size)


def embed_images(loaded: LoadedModel, images: Iterable[Image.Image], batch_size: int = 64,
                 trigger: InputTrigger | None = None) -> np.ndarray:
    """(n, dim) float32 L2-normalised image embeddings, through the model's validation
    transform, in batches of ``batch_size``.

    ``trigger(image, i)``, if given, is applied to the i-th image after the transform's resize
    and centre crop, in model-input pixels, before normalisation: where training's poisons
    carry their patch, whatever the stored image's size and aspect.
    """
    import torch

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if trigger is None:
        prepare = loaded.preprocess
    else:
        geometry, to_tensor = split_preprocess(loaded.preprocess)
        counter = itertools.count()

        def prepare(im: Image.Image) -> Any:
            return to_tensor(trigger(geometry(im), next(counter)))
    out: list[np.ndarray] = []
    with torch.no_grad():
        for batch in _batched(images, batch_size):
            x = torch.stack([prepare(im) for im in batch]).to(loaded.device)
            out.append(loaded.model.encode_image(x, normalize=True).float().cpu().numpy())
    if not out:
        dim = int(getattr(loaded.model.visual, "output_dim", 0) or 0)
        return np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def _batched(items: Iterable[Image.Image], n: int) -> Iterator[list[Image.Image]]:
    batch: list[Image.Image] = []
    for it in items:
        batch.append(it)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def embed_texts(loaded: LoadedModel, texts: Iterable[str], batch_size: int = 256) -> np.ndarray:
    """(n, dim) float32 L2-normalised text embeddings of ``texts``, tokenised by the model's
    own tokenizer (truncated to its context length), in batches of ``batch_size``."""
    import torch

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out: list[np.ndarray] = []
    with torch.no_grad():
        for batch in _batched(texts, batch_size):   # type: ignore[arg-type]
            tokens = loaded.tokenizer(list(batch)).to(loaded.device)
            out.append(loaded.model.encode_text(tokens, normalize=True).float().cpu().numpy())
    if not out:
        return np.zeros((0, int(getattr(loaded.model, "embed_dim", 0) or 0)), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)

"""The model zoo: open_clip JSON configs shipped in ``model_configs/``.

Architectures are data, as in open_clip: each file is an open_clip model config, registered
with ``open_clip.add_model_config`` so open_clip's own factory and trainer build them by name.
The paper's own setting (ResNet-50 image tower + CLIP's Transformer) is open_clip's built-in
``RN50``, used by name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from poisonclip.errors import SettingError, UserError

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
PAPER_MODEL = "RN50"

# What each shipped model is for (JSON cannot carry comments). Names not listed here fall
# back to a description from their prefix.
ROLES: dict[str, str] = {
    "poisonclip-test": "tests only",
    "poisonclip-small": "size ablation (paper 5.1.2)",
    "poisonclip-medium": "size ablation (paper 5.1.2)",
    "poisonclip-large": "size ablation (paper 5.1.2)",
    PAPER_MODEL: "the paper's model (4.1)",
    # The toy Figure 5 (right) family: the demo's model (poisonclip-tiny-rn16) with its
    # text tower unchanged and the ResNet image tower 4, 8 or 32 channels wide instead of 16,
    # so the image towers span 0.09M-5.2M parameters (58x) at 0.6-1.6x the demo's time.
    "poisonclip-scale-rn4": "model-size family, Fig. 5 right (image tower 0.09M)",
    "poisonclip-scale-rn8": "model-size family, Fig. 5 right (image tower 0.34M)",
    "poisonclip-scale-rn32": "model-size family, Fig. 5 right (image tower 5.2M)",
}


@lru_cache(maxsize=None)
def register_models() -> tuple[str, ...]:
    """Make our configs known to open_clip in this process; returns their names."""
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    return tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))


def shipped_models() -> tuple[str, ...]:
    """Our configs plus the paper's RN50: the models ``poisonclip models`` lists."""
    return (*register_models(), PAPER_MODEL)


def role(name: str) -> str:
    if name in ROLES:
        return ROLES[name]
    if name.startswith("poisonclip-tiny"):
        return "demo (CPU)"
    return "open_clip built-in" if name not in register_models() else ""


def _builtin_config_dir() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise UserError("open_clip is not installed; pip install open_clip_torch")
    return Path(spec.origin).parent / "model_configs"


@lru_cache(maxsize=None)
def known_models() -> tuple[str, ...]:
    """Every model name open_clip's trainer will accept here: its built-ins and ours.

    Read from the config files themselves, as open_clip does (a file counts when it has
    embed_dim, vision_cfg and text_cfg), so checking a name does not cost the parent
    process open_clip's import (several seconds of CPU on a small machine).
    """
    names = set()
    for folder in (_builtin_config_dir(), CONFIG_DIR):
        for f in folder.glob("*.json"):
            try:
                cfg = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(cfg, dict) and all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
                names.add(f.stem)
    return tuple(sorted(names))


def check_model(name: str) -> str:
    """Return ``name`` if open_clip can build it from a local config, else a UserError.

    Only local configs are accepted (``local-dir:`` or a registered name): nothing in
    poisonclip may download at run time.
    """
    if name in known_models():
        return name
    if name.startswith("local-dir:"):
        if (Path(name[len("local-dir:"):]) / "open_clip_config.json").is_file():
            return name
        raise SettingError("model", f"{name}: no open_clip_config.json in that folder")
    n_builtin = len(set(known_models()) - {p.stem for p in CONFIG_DIR.glob("*.json")})
    ours = [*sorted(p.stem for p in CONFIG_DIR.glob("*.json")), PAPER_MODEL]
    raise SettingError("model", f"{name}: unknown model; known: {', '.join(ours)} "
                       f"(or any of open_clip's {n_builtin} built-in names; "
                       "`poisonclip models --all` lists them)")


def input_size(name: str) -> int:
    """The side of the square image the model takes (its config's vision image_size)."""
    from open_clip.factory import get_model_config

    check_model(name)
    register_models()
    cfg = get_model_config(name)
    if cfg is None:
        raise SettingError("model", f"{name}: no config found")
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    return size if isinstance(size, int) else int(size[0])


@dataclass(frozen=True)
class ModelInfo:
    name: str
    params: int
    vision_params: int
    text_params: int
    token_embedding_params: int
    image_size: int
    embed_dim: int
    vision: str  # "ResNet" | "ViT" | "timm"
    role: str


@lru_cache(maxsize=None)
def model_info(name: str) -> ModelInfo:
    """Parameter counts of a registered model, from a model built on the meta device.

    The meta device allocates no memory and runs no initialisation, so counting RN50 takes a
    fraction of a second instead of building 100M real parameters.
    """
    import torch
    from open_clip.factory import get_model_config
    from open_clip.model import CLIP, CustomTextCLIP

    check_model(name)
    register_models()
    cfg = get_model_config(name)
    if cfg is None:
        raise SettingError("model", f"{name}: no config found")
    vision_cfg, text_cfg = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    custom = cfg.pop("custom_text", False) or "hf_model_name" in text_cfg
    if "multimodal_cfg" in cfg:
        raise SettingError("model", f"{name}: CoCa models are not CLIP models; pick a CLIP config")
    with torch.device("meta"):
        model = (CustomTextCLIP if custom else CLIP)(**cfg)
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.visual.parameters())
    emb = getattr(model, "token_embedding", None)
    size = vision_cfg.get("image_size", 224)
    if "timm_model_name" in vision_cfg:
        kind = "timm"
    elif isinstance(vision_cfg.get("layers"), (list, tuple)):
        kind = "ResNet"
    else:
        kind = "ViT"
    return ModelInfo(
        name=name, params=total, vision_params=vision,
        text_params=total - vision - _logit_params(model),
        token_embedding_params=emb.weight.numel() if emb is not None else 0,
        image_size=size if isinstance(size, int) else int(size[0]),
        embed_dim=int(cfg["embed_dim"]), vision=kind, role=role(name))


def _logit_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters(recurse=False) if n.startswith("logit_"))


def list_models(names: tuple[str, ...] | None = None) -> list[ModelInfo]:
    """ModelInfo for each name (default: the shipped models, smallest first, RN50 last)."""
    if names is not None:
        return [model_info(n) for n in names]
    ours = sorted((model_info(n) for n in register_models()), key=lambda m: (m.params, m.name))
    return [*ours, model_info(PAPER_MODEL)]


# open_clip_train saves these beside the weights; their shapes do not describe the model
# (logit_scale may be stored as a scalar or a 1-vector; open_clip reshapes it on load).
_RESHAPED_ON_LOAD = ("logit_scale", "logit_bias")


def read_state_dict(path: Path) -> dict:
    """The tensors of a checkpoint (open_clip_train's ``{"state_dict": ...}`` or a bare one,
    .pt or .safetensors), read with ``weights_only=True``; a UserError for anything else."""
    import pickle
    import re
    import zipfile

    import torch
    from open_clip.factory import load_state_dict

    try:
        sd = load_state_dict(str(path), device="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if m:
            raise UserError(f"{path}: refused to load: it contains Python object {m.group(1)}, and checkpoints "
                            "are read with weights_only=True (tensors and plain containers only); "
                            "re-save just the state_dict") from None
        raise UserError(f"{path}: not a readable PyTorch checkpoint (unpickling failed); "
                        "give a .pt file saved with torch.save or a .safetensors file") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, StopIteration) as e:
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}); "
                        "give a .pt file saved with torch.save or a .safetensors file") from None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path}: no state_dict of tensors inside; expected open_clip_train's "
                        "checkpoint ({'state_dict': ...}) or a bare state_dict")
    return sd


def check_fits(model, sd: dict, name: str, path: Path) -> None:
    """Refuse shape mismatches (open_clip would silently resize positional embeddings) and
    missing or extra tensors: the weights must be this architecture's."""
    own = model.state_dict()
    bad = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items()
           if k in sd and k not in _RESHAPED_ON_LOAD and tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        k, got, want = bad[0]
        raise UserError(f"{path}: does not fit model {name!r}: {len(bad)} tensor(s) differ in shape, "
                        f"e.g. {k} is {list(got)} in the checkpoint but {list(want)} in the model; "
                        "pass the --model the checkpoint was trained with")


def check_init(name: str, path: Path) -> None:
    """``path`` holds weights open_clip can load strictly into model ``name`` (fine-tuning's
    starting point, checked before the trainer starts; it loads them itself)."""
    import open_clip

    register_models()
    with quiet_random_init():
        model = open_clip.create_model(name, pretrained=None, pretrained_text=False)
    sd = read_state_dict(path)
    check_fits(model, sd, name, path)
    own = {k for k in model.state_dict() if k not in _RESHAPED_ON_LOAD}
    missing, extra = sorted(own - set(sd)), sorted(set(sd) - own - set(_RESHAPED_ON_LOAD))
    if missing or extra:
        raise UserError(f"{path}: does not fit model {name!r}: {len(missing)} model tensor(s) missing "
                        f"(e.g. {missing[:1]}), {len(extra)} unexpected (e.g. {extra[:1]}); "
                        "pass the --model the checkpoint was trained with")


@contextlib.contextmanager
def quiet_random_init() -> Iterator[None]:
    """open_clip warns "initialized randomly" when built without weights; ours come next."""
    def keep(record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def checkpoint_params(checkpoint: str | Path | None) -> int | None:
    """Parameters of a trained model, counted from its checkpoint's weights (None: no checkpoint).

    Counted from the weights actually saved, not the config, so a sweep's model-size axis is
    the size of the model that was trained."""
    if checkpoint is None:
        return None
    import torch

    sd = torch.load(checkpoint, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd)
    return int(sum(v.numel() for k, v in sd.items() if hasattr(v, "numel")))

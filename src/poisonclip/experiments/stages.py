"""The one place where sweeps call the pipeline's stages.

A sweep knows four operations, each writing into a folder it is given::

    corpus(cfg, out)                          -> info    the dataset to poison and test on
    poison(cfg, corpus, out)                  -> info    a poisoned dataset folder (poison.json)
    train(cfg, data, out[, on_event])         -> info    a run folder (run.json); data is a poison
                                                         folder, or the corpus for clean baselines;
                                                         on_event: the trainer's events (optional)
    evaluate(cfg, run, corpus, poison, out)   -> metrics flat {name: number} for the results table

plus ``resolve(stage, mapping)``, which validates one stage's section of a spec against the
stage's frozen config dataclass and returns it with every default filled in: the resolved
config is what content keys hash, so a default changed in the code is a new artefact, and a
misspelt field fails at expansion instead of hours into a sweep.

``PoisonclipStages`` maps these onto the library's stage functions. It knows no attack by
name: ``poison.attack`` is looked up in the attack registry, whose entry converts the spec's
settings to the attack's config; the evaluator measures it through the entry's evaluation and
the table gets the columns that evaluation gives. The corpus hands an attack its class list and
its held-out test split when the attack's config has a ``classnames`` / ``target_source``
setting the spec leaves out, and an attack with a ``resolution`` setting writes its poisons at
the trained model's input size. Another implementation (your own trainer, or the fakes the
tests use) is named in a spec as ``stages: module:object``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol

from poisonclip.attacks.plan import jsonable
from poisonclip.attacks.registry import unused_trigger_settings
from poisonclip.contracts import (CLASSNAMES_FILE, POISON_INFO_FILE, PROBE_TABLE, TEST_TABLE, TRAIN_TABLE,
                                  CorpusPaths, read_poison_info, write_external_corpus)
from poisonclip.errors import SettingError, UserError

# A training run's event handler (``train.run.EventHandler``: Launched, StepLog, ... events), which
# a runner that shows progress in this process hands to ``Stages.train``.
TrainEvents = Callable[[object], None]

# Fields of EvalConfig the sweep fills in itself; a spec may not set them.
_EVAL_PATHS = {"data", "out", "run", "model", "checkpoint", "poison", "classnames", "overwrite"}


class Stages(Protocol):
    def resolve(self, stage: str, config: Mapping[str, Any]) -> dict[str, Any]: ...

    def corpus(self, config: Mapping[str, Any], out: Path) -> Mapping[str, Any] | None: ...

    def poison(self, config: Mapping[str, Any], corpus: Path, out: Path) -> Mapping[str, Any] | None: ...

    def train(self, config: Mapping[str, Any], data: Path, out: Path,
              on_event: TrainEvents | None = None) -> Mapping[str, Any] | None: ...

    def evaluate(self, config: Mapping[str, Any], run: Path, corpus: Path, poison: Path | None,
                 out: Path) -> Mapping[str, Any]: ...


def takes_train_events(stages: Any) -> bool:
    """Whether ``stages.train`` takes ``on_event=``: the parameter came later than the protocol,
    and a Stages written without it must keep working (its training runs without a live view).
    Asked of the signature, not by calling and catching TypeError, which would also catch a
    TypeError from inside the training."""
    try:
        params = inspect.signature(stages.train).parameters
    except (TypeError, ValueError):   # no signature to read (a builtin, a C extension)
        return False
    return "on_event" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def load_stages(ref: str) -> Stages:
    """``poisonclip`` (the default) or ``package.module:object`` (a class, factory or instance)."""
    if ref in ("poisonclip", "", None):
        return PoisonclipStages()
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise UserError(f"stages: '{ref}' must be 'poisonclip' or 'package.module:object'")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"stages: cannot load '{ref}' ({e})") from None
    return obj() if callable(obj) and not _is_stages(obj) else obj


def _is_stages(obj: Any) -> bool:
    return all(callable(getattr(obj, m, None)) for m in ("resolve", "corpus", "poison", "train", "evaluate")) \
        and not isinstance(obj, type)


def _build(cls: type, where: str, config: Mapping[str, Any], **fixed: Any) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise UserError(f"sweep spec: {where}: unknown field(s) {unknown}; known: {sorted(names - set(fixed))}")
    try:
        return cls(**{**dict(config), **fixed})
    except (TypeError, ValueError) as e:
        raise UserError(f"sweep spec: {where}: {e}") from None


_POISON_FIXED = {"data", "out", "overwrite"}
_TRAIN_FIXED = {"data", "out", "overwrite", "resume"}


@contextlib.contextmanager
def _as_spec_keys(stage: str) -> Iterator[None]:
    """A library error about a setting, named as the spec names it: ``sweep spec: train.lr: ...``."""
    try:
        yield
    except SettingError as e:
        raise UserError(f"sweep spec: {stage}.{e.setting}: {e.problem}") from None


# Sweep-only train settings of the fine-tuning threat model: the train section describes a
# clean model trained from scratch on the corpus (the same model a from-scratch trial of those
# settings trains as its clean control, so it is built once); with ``finetune_epochs`` > 0 the
# trial's models (poisoned, and clean as the control) are that model fine-tuned for
# ``finetune_epochs`` epochs at ``finetune_lr`` with ``finetune_warmup`` warm-up steps.
FINETUNE_KEYS = ("finetune_epochs", "finetune_lr", "finetune_warmup")


def _finetune_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Take the ``finetune_*`` settings out of a train section (checked); {} for none."""
    epochs = config.pop("finetune_epochs", 0)
    lr, warmup = config.pop("finetune_lr", None), config.pop("finetune_warmup", None)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise SettingError("finetune_epochs", f"must be a whole number >= 0 (0: train from scratch), got {epochs!r}")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
        raise SettingError("finetune_lr", f"must be a positive number, got {lr!r}")
    if warmup is not None and (isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0):
        raise SettingError("finetune_warmup", f"must be a whole number >= 0, got {warmup!r}")
    if epochs == 0:   # from scratch: the fine-tuning rate and warm-up do not apply (a grid may
        return {}     # set them once for all its points, finetune_epochs 0 among them)
    return {"finetune_epochs": epochs, **({"finetune_lr": float(lr)} if lr is not None else {}),
            **({"finetune_warmup": warmup} if warmup is not None else {})}


def pretrain_config(train: Mapping[str, Any]) -> dict[str, Any] | None:
    """The clean model a fine-tuning trial starts from (its train section without the
    ``finetune_*`` settings: a from-scratch training), or None for a from-scratch trial."""
    if not train.get("finetune_epochs"):
        return None
    return {k: v for k, v in train.items() if k not in FINETUNE_KEYS}


def finetune_config(train: Mapping[str, Any], init: Path | str) -> dict[str, Any]:
    """The training that fine-tunes the pre-trained run ``init``: ``finetune_epochs`` epochs at
    ``finetune_lr`` (default: ``lr``) with ``finetune_warmup`` warm-up steps (default: ``warmup``)."""
    cfg = {k: v for k, v in train.items() if k not in FINETUNE_KEYS}
    cfg["epochs"] = train["finetune_epochs"]
    if train.get("finetune_lr") is not None:
        cfg["lr"] = train["finetune_lr"]
    if train.get("finetune_warmup") is not None:
        cfg["warmup"] = train["finetune_warmup"]
    cfg["init"] = str(init)
    return cfg


def _attack(name: Any) -> Any:
    """The registered attack a spec's ``poison.attack`` names (``attacks.registry.ATTACKS``)."""
    from poisonclip.attacks.registry import ATTACKS

    known = ATTACKS.names()
    if name not in known:
        raise UserError(f"sweep spec: poison.attack: {name!r} is not one of {known}")
    return ATTACKS.get(name)


def _attack_config(attack: Any, config: Mapping[str, Any], **fixed: Any) -> Any:
    """A spec's poison section -> the attack's config (converted by the attack's registry entry)."""
    try:
        return attack.config_from(config, **fixed)
    except SettingError as e:
        raise UserError(f"sweep spec: poison.{e.setting}: {e.problem}") from None
    except UserError as e:
        raise UserError(f"sweep spec: poison: {e}") from None


_EXTERNAL_FIELDS = {"path", "train", "test", "classnames", "probe"}


def _resolve_external(config: dict[str, Any]) -> dict[str, Any]:
    """A corpus the user already has: ``path: DIR`` laid out like `poisonclip data synth`
    output, or ``train:`` + ``test:`` (+ ``classnames:``, ``probe:``) anywhere. Identified by absolute
    paths and file sizes (the data are not hashed: a sweep must not read CC3M to start)."""
    unknown = sorted(set(config) - _EXTERNAL_FIELDS)
    if unknown:
        raise UserError(f"sweep spec: corpus: {unknown} do not go with an existing corpus "
                        "(path, or train + test + classnames)")
    if "path" in config:
        if set(config) - {"path"}:
            raise UserError("sweep spec: corpus: give either path or train + test, not both")
        root = Path(config["path"]).expanduser().resolve()
        ext = {"train": str(root / TRAIN_TABLE), "test": str(root / TEST_TABLE),
               "classnames": str(root / CLASSNAMES_FILE) if (root / CLASSNAMES_FILE).is_file() else None,
               "probe": str(root / PROBE_TABLE) if (root / PROBE_TABLE).is_file() else None}
    else:
        missing = [k for k in ("train", "test") if k not in config]
        if missing:
            raise UserError(f"sweep spec: corpus: {missing} missing; an existing corpus needs train and test")
        ext = {k: (_abs(config[k]) if config.get(k) else None) for k in ("train", "test", "classnames", "probe")}
    if ext.get("probe") is None:
        ext.pop("probe", None)   # keeps the key of a corpus without a probe set as it was
    for key in ("train", "test", "classnames", "probe"):
        if key not in ext:
            continue
        value = ext[key]
        if value and "::" not in value and "{" not in value and not Path(value).exists():
            raise UserError(f"sweep spec: corpus.{key}: {value} not found")
    sizes = {k: Path(v).stat().st_size for k, v in ext.items() if v and Path(v).is_file()}
    return {"external": ext, "sizes": sizes}


def _abs(value: Any) -> str:
    text = str(value)
    if "::" in text or "{" in text:   # shard lists / brace patterns are passed through
        return text
    return str(Path(text).expanduser().resolve())


class PoisonclipStages:
    """The sweep's view of poisonclip's own stages."""

    # --- resolve -------------------------------------------------------------------------
    def link(self, raw: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """Settings one stage takes from another: an attack whose config has a ``resolution``
        (a trigger's: the backdoor's) writes its poisons at the input size of the model the
        trial trains (unless the spec sets ``poison.resolution``), so the patch reaches that
        model pixel for pixel."""
        out = {stage: dict(cfg) for stage, cfg in raw.items()}
        poison = out.get("poison", {})
        if _attack(poison.get("attack", "backdoor")).has_setting("resolution") and "resolution" not in poison:
            from poisonclip.train.models import input_size

            with _as_spec_keys("train"):
                model = self._resolve_train(dict(out.get("train", {})))["model"]
                poison["resolution"] = input_size(model)
            out["poison"] = poison
        return out

    def resolve(self, stage: str, config: Mapping[str, Any]) -> dict[str, Any]:
        with _as_spec_keys(stage):
            return getattr(self, f"_resolve_{stage}")(dict(config))

    def _resolve_corpus(self, config: dict[str, Any]) -> dict[str, Any]:
        if set(config) & _EXTERNAL_FIELDS:
            return _resolve_external(config)
        from poisonclip.data.synthetic import SynthConfig

        return jsonable(_build(SynthConfig, "corpus", config))

    def _resolve_poison(self, config: dict[str, Any]) -> dict[str, Any]:
        attack = _attack(config.pop("attack", "backdoor"))
        fixed = sorted(set(config) & _POISON_FIXED)
        if fixed:
            raise UserError(f"sweep spec: poison: {fixed} are set by the sweep for each trial; remove them")
        cfg = _attack_config(attack, config, data="-", out="-")
        resolved = {"attack": attack.name, **{k: v for k, v in jsonable(cfg).items() if k not in _POISON_FIXED}}
        if isinstance(resolved.get("trigger"), str):
            # Another trigger's parameters cannot change these poisons: left out of the content
            # key, so a checkerboard sweep's poisons keep the key they had before they existed.
            for k in unused_trigger_settings(resolved["trigger"]):
                resolved.pop(k, None)
        return resolved

    def _resolve_train(self, config: dict[str, Any]) -> dict[str, Any]:
        from poisonclip.train.presets import DEFAULT_PRESET
        from poisonclip.train.run import TrainConfig

        fixed = sorted(set(config) & _TRAIN_FIXED)
        if fixed:
            raise UserError(f"sweep spec: train: {fixed} are set by the sweep for each trial; remove them")
        # a defense to train with (defend.sweep), not TrainConfig's settings
        defense, settings = config.pop("defense", None), config.pop("defense_settings", None)
        finetune = _finetune_settings(config)
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise UserError(f"sweep spec: train: unknown field(s) {unknown}; known: "
                            f"{sorted((names - _TRAIN_FIXED) | {'defense', 'defense_settings', *FINETUNE_KEYS})}")
        preset = config.pop("preset", DEFAULT_PRESET)
        if "extra_args" in config:
            config["extra_args"] = tuple(config["extra_args"])
        try:
            cfg = TrainConfig.from_preset(preset, data="-", out="-", **config)
        except (TypeError, ValueError) as e:
            raise UserError(f"sweep spec: train: {e}") from None
        resolved = {k: v for k, v in jsonable(cfg).items() if k not in _TRAIN_FIXED}
        if defense is not None or settings is not None:   # only then: other specs keep their models' keys
            from poisonclip.defend.sweep import NONE, resolve_defense

            resolved.update(resolve_defense(NONE if defense is None else defense, settings))
        if finetune:
            if resolved.get("init"):
                raise SettingError("init", "give either `init` (a checkpoint) or `finetune_epochs`, not both")
            resolved.update(finetune)   # absent otherwise: sweeps without fine-tuning keep their keys
        return resolved

    def _resolve_eval(self, config: dict[str, Any]) -> dict[str, Any]:
        from poisonclip.evaluate.api import EvalConfig

        fixed = sorted(set(config) & _EVAL_PATHS)
        if fixed:
            raise UserError(f"sweep spec: eval: {fixed} are set by the sweep for each trial; remove them")
        cfg = _build(EvalConfig, "eval", config, data=Path("."), out=Path("."))
        return {k: v for k, v in jsonable(cfg).items() if k not in _EVAL_PATHS}

    # --- run -----------------------------------------------------------------------------
    def corpus(self, config: Mapping[str, Any], out: Path) -> dict[str, Any]:
        if "external" in config:
            out.mkdir(parents=True)
            write_external_corpus(out, CorpusPaths(**config["external"]))
            return dict(config["external"])
        from poisonclip.data.corpus import write_corpus
        from poisonclip.data.synthetic import SynthConfig

        cfg = SynthConfig(**config)
        write_corpus(cfg, out, formats=("csv",))
        return {"n_train": cfg.n_train, "n_test": cfg.n_test, "n_probe": cfg.n_probe}

    def poison(self, config: Mapping[str, Any], corpus: Path, out: Path) -> dict[str, Any]:
        from poisonclip.attacks.api import poison

        config = dict(config)
        attack = _attack(config.pop("attack"))
        paths = CorpusPaths.from_folder(corpus)
        # The corpus' files an attack takes when the spec leaves them out, by setting name:
        # its class list, and (targeted) the held-out labelled set targets are drawn from --
        # never the training data, where a target already sits with its true caption; the
        # evaluator leaves them out of clean accuracy.
        if (attack.has_setting("classnames") and paths.classnames and not config.get("classnames")
                and not config.get("no_classnames")):
            config["classnames"] = paths.classnames
        if attack.has_setting("target_source") and not config.get("target_source"):
            config["target_source"] = paths.test
        cfg = _attack_config(attack, config, data=paths.train, out=str(out))
        with _as_spec_keys("poison"):
            res = poison(cfg)
        total = res.n_clean + res.n_poisons
        info: dict[str, Any] = {"n_poisons": res.n_poisons, "n_clean": res.n_clean, "num_samples": res.num_samples,
                                "poison_ratio": res.n_poisons / total if total else None}
        bd = read_poison_info(res.out).backdoor
        if bd is not None:   # the trigger as written, into the results table (data.trigger.*)
            info["trigger"] = {"name": bd.trigger, "placement": bd.placement, "patch_size": bd.patch_size,
                               **{k: getattr(bd, k) for k in bd.TRIGGER_PARAMS if getattr(bd, k) is not None}}
        return info

    def train(self, config: Mapping[str, Any], data: Path, out: Path,
              on_event: TrainEvents | None = None) -> dict[str, Any]:
        from poisonclip.train.run import TrainConfig, train

        config = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items()}
        source = str(data) if (data / POISON_INFO_FILE).is_file() else CorpusPaths.from_folder(data).train
        defense, settings = config.pop("defense", None), config.pop("defense_settings", None) or {}
        if defense not in (None, "none"):
            from poisonclip.defend.sweep import train_defended

            with _as_spec_keys("train"):
                return train_defended(defense, settings, config, data, source, out, on_event)
        with _as_spec_keys("train"):
            run_cfg = TrainConfig(data=str(source), out=str(out), **config)
            res = train(run_cfg, on_event=on_event)
        from poisonclip.train.models import checkpoint_params, model_info

        try:   # the image tower's share: the paper's Fig. 5 (right) varies the whole model, ours the tower
            vision = model_info(run_cfg.model).vision_params
        except Exception:  # noqa: BLE001 - a model open_clip cannot count on the meta device: leave it out
            vision = None
        return {"n_params": checkpoint_params(res.checkpoint), "vision_params": vision,
                "wall_time_s": round(res.wall_time_s, 3),
                "samples_per_s": round(res.samples_per_s, 3),
                "final_loss": res.loss_curve[-1] if res.loss_curve else None}

    def evaluate(self, config: Mapping[str, Any], run: Path, corpus: Path, poison: Path | None,
                 out: Path) -> dict[str, Any]:
        from poisonclip.defend.sweep import defended_run
        from poisonclip.evaluate.api import EvalConfig, evaluate
        from poisonclip.evaluate.columns import flat_metrics

        run = defended_run(run)   # a defended model: the defense's own run folder
        paths = CorpusPaths.from_folder(corpus)
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items()}
        if kwargs.get("probe", True) and not kwargs.get("probe_train") and paths.probe:
            kwargs["probe_train"] = Path(paths.probe)   # the corpus' own probe split, apart from the test split
        cfg = EvalConfig(data=Path(paths.test), out=out, run=run, poison=poison,
                         classnames=Path(paths.classnames) if paths.classnames else None, **kwargs)
        with _as_spec_keys("eval"):
            return flat_metrics(evaluate(cfg))

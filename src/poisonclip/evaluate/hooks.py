"""What the evaluator hands an attack's evaluation, and what it expects back.

The evaluator (``evaluate.api``) measures what every model has: clean accuracy (zero-shot and
linear probe) and the similarity of clean embeddings. What an attack adds -- a backdoor's ASR
and z-score, a targeted attack's success per target -- is measured by the ``AttackEvaluation``
its registry entry names (``poisonclip.attacks.registry.Attack.evaluation``), called with an
``EvalContext`` that holds the clean measurements to build on. The same object gives the
results-table columns and the over-seed summaries of its metrics, so an attack registered
once reaches ``metrics.json``, the sweep table and ``eval-compare`` alike.

Built-in attacks: ``evaluate.backdoor`` and ``evaluate.targeted``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from poisonclip.contracts import PoisonInfo
from poisonclip.data.evalset import LabelledSet
from poisonclip.errors import UserError


@dataclass(frozen=True)
class HeldOut:
    """Images of a labelled set that belong to the attack (a targeted attack's targets).

    They are left out of clean accuracy and of the probe's training split: counted there, the
    attack's own image would be scored as a clean one. Found by the sha256 of the image bytes,
    and by key when the set is ``source``, the very set they were drawn from.
    """

    sha256: frozenset[str] = frozenset()
    keys: frozenset[str] = frozenset()
    source: str | None = None


@dataclass(frozen=True)
class Captions:
    """The eval images' own captions (retrieval): ``texts[j]`` describes image ``image[j]``
    (an index into ``EvalContext.images``); ``emb`` their text embeddings."""

    texts: tuple[str, ...]
    image: np.ndarray
    emb: np.ndarray


@dataclass
class EvalContext:
    """One model's clean measurements on the eval set, for an attack's evaluation to build on.

    ``images``/``labels`` are the eval set with the attack's own images (``HeldOut``) left out.
    The probe (None with ``--no-probe``) is tested on ``probe_idx`` of them. ``arrays`` is
    written to ``similarities.npz``: an evaluation may add its own arrays.
    """

    model: Any                          # evaluate.embed.LoadedModel
    images: LabelledSet
    labels: np.ndarray
    classnames: tuple[str, ...]
    weights: np.ndarray                 # zero-shot classifier (one row per class)
    zeroshot_clean: np.ndarray          # zero-shot scores of the clean images
    clean_emb: np.ndarray
    clean_pairs: Any                    # evaluate.metrics.PairStats of the clean embeddings
    edges: np.ndarray                   # histogram bins over cosine [-1, 1]
    probe: Any | None                   # evaluate.probe.Probe
    probe_idx: np.ndarray
    seed: int
    batch_size: int
    chunk: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    say: Callable[[str], None] = lambda _msg: None
    captions: Captions | None = None    # None: retrieval off, or the eval set has no captions

    def decoded(self) -> Iterator[Image.Image]:
        """The eval images, decoded one at a time."""
        for s in self.images.samples:
            yield s.decode()

    def rng(self, stream: int) -> np.random.Generator:
        """An independent generator for one purpose of this evaluation (its seed, ``stream``)."""
        return np.random.default_rng([self.seed, stream])


def malformed(poison: PoisonInfo, problem: str) -> UserError:
    """A poison.json whose attack section cannot be evaluated (one line, what to run again)."""
    return UserError(f"{poison.path}: malformed: {problem}; re-run `poisonclip poison`")


def _none(*_args: Any) -> None:
    return None


def _the_poison(poison: PoisonInfo, *_args: Any) -> PoisonInfo:
    return poison


def _no_columns(_metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def _no_summary(_ms: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class AttackEvaluation:
    """How the evaluator measures one attack; what an attack's registry entry points to.

    * ``prepare(poison, eval_set, path)``: take the attack's part of poison.json (a
      ``contracts.PoisonInfo``: ``backdoor``, ``targets``, or a registered attack's own section
      in ``sections``) and check it against the eval set (its class list, its labels; ``path``
      names it in errors) before any model is loaded; returns what the other hooks need
      (default: the ``PoisonInfo``; a UserError for a file or set that cannot be evaluated).
    * ``held_out(prepared)``: the attack's own images among labelled sets (``HeldOut``), or None.
    * ``measure(ctx, prepared)``: the attack's metrics, as top-level sections of metrics.json
      (``{"backdoor": {...}}``).
    * ``columns(metrics)``: the results-table columns of those sections (flat name -> number).
    * ``summarise(metrics_list)``: their mean/pooled summaries over models (``eval-compare``).
    """

    measure: Callable[[EvalContext, Any], Mapping[str, Any]]
    columns: Callable[[Mapping[str, Any]], Mapping[str, Any]] = _no_columns
    prepare: Callable[[PoisonInfo, LabelledSet, Path], Any] = _the_poison
    held_out: Callable[[Any], HeldOut | None] = _none
    summarise: Callable[[Sequence[Mapping[str, Any]]], Mapping[str, Any]] = _no_summary


def attack_evaluation(poison: PoisonInfo) -> AttackEvaluation:
    """The registered evaluation of the attack that wrote ``poison``."""
    from poisonclip.attacks.registry import ATTACKS

    known = ATTACKS.names()
    if poison.attack not in known:
        raise malformed(poison, f"attack {poison.attack!r} is not a registered attack (known: {', '.join(known)})")
    return ATTACKS.get(poison.attack).evaluator()


def all_evaluations() -> list[AttackEvaluation]:
    """Every registered attack's evaluation, in name order (for columns and summaries)."""
    from poisonclip.attacks.registry import ATTACKS

    entries = (ATTACKS.get(name) for name in ATTACKS.names())
    return [e.evaluator() for e in entries if e.evaluation is not None]


def class_index(label: str, classnames: Sequence[str], where: str) -> int:
    """``label``'s index in the eval set's class list, or a UserError naming ``where`` it came from."""
    if label not in classnames:
        raise UserError(f"{where}: target label {label!r} is not in the eval class list {list(classnames)}; "
                        "evaluate on a set whose classnames include it (or give `classnames`)")
    return list(classnames).index(label)

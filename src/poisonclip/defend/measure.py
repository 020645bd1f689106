"""What every defense reports: the same evaluation of the model before and after it.

Both models go through ``evaluate.api.evaluate`` with one labelled set and the poisoned
folder whose attack they are measured against (its poison.json gives the trigger or the
targets), so the numbers differ only by the model. The defense record keeps the results
table's columns (``evaluate.columns.flat_metrics``); ``HEADLINE`` names the ones the
command line prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from poisonclip.contracts import CorpusPaths, read_poison_info
from poisonclip.errors import SettingError, UserError

# (column, what it is) printed before -> after; every other column stays in defense.json.
HEADLINE = (("asr_as_trained_zeroshot", "backdoor ASR (zero-shot)"), ("z_as_trained", "backdoor z-score"),
            ("targeted_success_zeroshot", "targeted success (zero-shot)"), ("top1_zeroshot", "clean zero-shot top-1"))


@dataclass(frozen=True)
class MeasureConfig:
    """How the models are evaluated (``poisonclip eval``'s settings that matter here)."""

    eval_data: Path | None = None     # labelled set; None: the corpus test split beside the poisoned set's clean data
    classnames: Path | None = None    # None: classnames.txt beside the eval set
    templates: str | None = None      # "openai" (default), "simple" or a file
    probe: bool = False               # the linear probe too (slower)
    batch_size: int = 128
    device: str = "cpu"
    seed: int = 0


def eval_set(cfg: MeasureConfig, poison: Path | None) -> tuple[Path, Path | None]:
    """(labelled set, class list): the given one, or the test split of the corpus the
    poisoned set was made from (``clean_data``'s folder, laid out by `poisonclip data synth`)."""
    if cfg.eval_data is not None:
        if not Path(cfg.eval_data).exists():
            raise SettingError("eval_data", f"{cfg.eval_data}: not found; give a labelled table (e.g. a corpus' "
                               "test.tsv) or an image folder")
        return Path(cfg.eval_data), cfg.classnames
    if poison is not None:
        clean = read_poison_info(poison).clean_data
        if clean and "::" not in clean:
            try:
                paths = CorpusPaths.from_folder(Path(clean).parent)
            except UserError:
                paths = None
            if paths is not None and Path(paths.test).is_file():
                names = cfg.classnames or (Path(paths.classnames) if paths.classnames else None)
                return Path(paths.test), names
    raise SettingError("eval_data", "no labelled set to evaluate on: give one (e.g. the corpus' test.tsv); it is "
                       "found by itself only when the poisoned set was made from a corpus folder")


def evaluate_run(cfg: MeasureConfig, run: Path, poison: Path | None, out: Path) -> dict[str, Any]:
    """Evaluate ``run`` into ``out`` (metrics.json); its results-table columns."""
    from poisonclip.evaluate.api import EvalConfig, evaluate
    from poisonclip.evaluate.columns import flat_metrics

    data, names = eval_set(cfg, poison)
    m = evaluate(EvalConfig(data=data, out=out, run=run, classnames=names, templates=cfg.templates, poison=poison,
                            probe=cfg.probe, seed=cfg.seed, batch_size=cfg.batch_size, device=cfg.device))
    return flat_metrics(m)


def timed_eval(cfg: MeasureConfig, run: Path, poison: Path | None, out: Path) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    cols = evaluate_run(cfg, run, poison, out)
    return cols, round(time.perf_counter() - t0, 3)


def headline(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[tuple[str, Any, Any]]:
    """(what, before, after) for the headline columns either evaluation has."""
    rows = []
    for col, what in HEADLINE:
        b = (before or {}).get(col)
        a = (after or {}).get(col)
        if b is not None or a is not None:
            rows.append((what, b, a))
    return rows

"""Stand-in stages for the sweep machinery's tests: real files, deterministic numbers, no torch.

Named in a spec as ``stages: tests.sweep_fakes:FakeStages``. Every call appends one line to
``<sweep>/calls.log`` (O_APPEND writes of one short line are atomic), so tests can count how
often each artefact was built. ``<sweep>/hold-train`` makes the next training after that many
finished trainings block (it writes ``<sweep>/blocked``) until the file is removed: the
kill-and-resume test kills the sweep there, mid-trial.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from poisonclip.contracts import Metrics, ModelIdentity, write_metrics
from poisonclip.evaluate.stats import Rate


def _root(path: Path) -> Path:
    for p in [path, *path.parents]:
        if (p / "trials.json").exists():
            return p
    raise AssertionError(f"no sweep folder above {path}")


def _log(path: Path, *fields: str) -> None:
    fd = os.open(_root(path) / "calls.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, ("\t".join(fields) + "\n").encode())
    finally:
        os.close(fd)


def _rng(*parts: Any) -> np.random.Generator:
    import hashlib

    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


class FakeStages:
    DEFAULTS = {
        "corpus": {"n_train": 100, "n_test": 50, "seed": 0},
        "poison": {"attack": "backdoor", "n_poisons": 10, "patch_size": 16, "placement": "corner", "seed": 0},
        "train": {"model": "tiny", "epochs": 1, "seed": 0, "fail": False},
        "eval": {"templates": "simple", "seed": 0},
    }

    def resolve(self, stage: str, config: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(config) - set(self.DEFAULTS[stage])
        if unknown:
            from poisonclip.errors import UserError

            raise UserError(f"sweep spec: {stage}: unknown field(s) {sorted(unknown)}")
        return {**self.DEFAULTS[stage], **dict(config)}

    def corpus(self, config: Mapping[str, Any], out: Path) -> dict[str, Any]:
        out.mkdir(parents=True)
        (out / "corpus.json").write_text(json.dumps(dict(config)))
        _log(out, "corpus", out.name)
        return {"n_train": config["n_train"]}

    def poison(self, config: Mapping[str, Any], corpus: Path, out: Path) -> dict[str, Any]:
        out.mkdir(parents=True)
        (out / "poison.json").write_text(json.dumps({"corpus": str(corpus), **dict(config)}))
        _log(out, "poison", out.name)
        return {"n_poisons": config["n_poisons"]}

    def train(self, config: Mapping[str, Any], data: Path, out: Path) -> dict[str, Any]:
        root = _root(out)
        out.mkdir(parents=True)
        _log(out, "train-start", out.name)
        hold = root / "hold-train"
        if hold.exists():
            finished = len(list((root / "cache" / "model").glob("*.json")))
            if finished >= int(hold.read_text().strip() or 0):
                (root / "blocked").write_text(out.name)
                deadline = time.monotonic() + 120
                while hold.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
        if config.get("fail"):
            raise RuntimeError("fake training diverged")
        poison = json.loads((data / "poison.json").read_text()) if (data / "poison.json").exists() else None
        (out / "run.json").write_text(json.dumps({"config": dict(config), "poison": poison}))
        _log(out, "train", out.name)
        return {"n_params": {"tiny": 1_000_000, "small": 5_000_000, "big": 30_000_000}.get(config["model"], 1)}

    def evaluate(self, config: Mapping[str, Any], run: Path, corpus: Path, poison: Path | None,
                 out: Path) -> dict[str, Any]:
        out.mkdir(parents=True)
        info = json.loads((run / "run.json").read_text())
        p = info["poison"] or {"n_poisons": 0, "placement": "corner", "patch_size": 16}
        t = info["config"]
        rng = _rng({k: v for k, v in p.items() if k != "corpus"}, t)   # not the folder's path
        n = p["n_poisons"]
        strength = n / (n + 20.0) * (1.0 if p["placement"] == "corner" else 0.6)
        asr = float(np.clip(strength + 0.05 * rng.normal(), 0, 1))
        k_n = 45
        z = 4 * strength + 0.3 * rng.normal()
        edges = np.linspace(-1, 1, 201)
        clean = np.histogram(np.clip(rng.normal(0.1, 0.1, 1225), -1, 1), edges)[0]
        trig = np.histogram(np.clip(rng.normal(0.1 + 0.1 * z, 0.1, 1225), -1, 1), edges)[0]
        same_pairs = clean
        same = (clean * np.clip((edges[:-1] + 1) / 2, 0, 1)).astype(np.int64)
        np.savez(out / "similarities.npz", edges=edges, clean_counts=clean, triggered_train_placement_counts=trig,
                 same_label_pairs=same_pairs, same_label_same=same)
        top1_k = int(40 - 3 * strength + rng.integers(0, 3))
        metrics = {"top1_zeroshot": top1_k / 50, "top1_zeroshot_k": top1_k, "top1_zeroshot_n": 50,
                   "asr_as_trained_zeroshot": round(asr * k_n) / k_n, "asr_as_trained_zeroshot_k": round(asr * k_n),
                   "asr_as_trained_zeroshot_n": k_n, "z_as_trained": z, "z_random": z * 0.5,
                   "sim_clean_mean": 0.1, "sim_clean_std": 0.1, "sim_triggered_as_trained_mean": 0.1 + 0.1 * z}
        if p["placement"] == "corner":
            metrics["z_corner"] = z
        # the evaluator's own file, as the report reads it (its flat numbers are the return value)
        write_metrics(out, Metrics(model=ModelIdentity(name=str(t["model"]), checkpoint=str(run)),
                                   clean={"zeroshot": {"top1": Rate(top1_k, 50).to_dict()}}))
        _log(out, "eval", str(run.name))
        return metrics


def calls(sweep: Path) -> list[tuple[str, str]]:
    path = sweep / "calls.log"
    if not path.exists():
        return []
    return [tuple(line.split("\t")) for line in path.read_text().splitlines()]

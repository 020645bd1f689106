"""The sweep runner on stand-in stages: sharing, resume, failures, the process pool, the store."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from poisonclip.contracts import TRIAL_RESULT_FILE, read_trial_result
from poisonclip.errors import UserError
from poisonclip.experiments.runner import LocalRunner, PoolRunner, ensure_artefact, run_sweep
from poisonclip.experiments.spec import parse_spec
from poisonclip.experiments.store import ResultsStore, State, SweepDir, trial_state
from tests.sweep_fakes import FakeStages, calls

FAKE = "tests.sweep_fakes:FakeStages"


def spec(**over):
    raw = {"name": "t", "stages": FAKE, "grid": {"poison.n_poisons": [5, 20], "seed": [0, 1]}}
    raw.update(over)
    return parse_spec(raw, allow_custom_stages=True)


def test_each_artefact_is_built_once_and_every_trial_recorded(tmp_path):
    res = run_sweep(spec(), tmp_path / "s", LocalRunner(FakeStages()))
    assert [o.state for o in res.outcomes] == ["done"] * 4
    built = Counter(kind for kind, *_ in calls(tmp_path / "s"))
    # 1 corpus; 4 poisoned sets; 4 poisoned + 2 clean models (one per seed); 8 evaluations
    assert built == {"corpus": 1, "poison": 4, "train-start": 6, "train": 6, "eval": 8}
    df = ResultsStore(res.sweep.db).frame()
    assert sorted(df["trial"]) == sorted(t.name for t in res.trials)
    assert {"poison.n_poisons", "seed", "poisoned.z_as_trained", "clean.top1_zeroshot",
            "model.n_params", "clean_model.n_params", "data.n_poisons"} <= set(df.columns)
    row = df[df["trial"] == "n_poisons=20__seed=1"].iloc[0]
    record = read_trial_result(res.sweep.trial("n_poisons=20__seed=1"))
    assert record.name == "n_poisons=20__seed=1" and record.params == {"poison.n_poisons": 20, "seed": 1}
    assert row["poisoned.z_as_trained"] == pytest.approx(record.metrics["poisoned"]["z_as_trained"])
    assert row["model.n_params"] == 1_000_000


def test_rerun_skips_finished_trials_and_adding_a_seed_runs_only_the_new_ones(tmp_path):
    run_sweep(spec(), tmp_path / "s", LocalRunner(FakeStages()))
    n = len(calls(tmp_path / "s"))
    again = run_sweep(spec(), tmp_path / "s", LocalRunner(FakeStages()))
    assert again.already_done == 4 and again.outcomes == [] and len(calls(tmp_path / "s")) == n
    more = run_sweep(spec(grid={"poison.n_poisons": [5, 20], "seed": [0, 1, 2]}), tmp_path / "s",
                     LocalRunner(FakeStages()))
    assert more.already_done == 4 and [o.state for o in more.outcomes] == ["done", "done"]
    new = Counter(kind for kind, *_ in calls(tmp_path / "s")[n:])
    assert new == {"poison": 2, "train-start": 3, "train": 3, "eval": 4}   # corpus reused
    assert len(ResultsStore(more.sweep.db).frame()) == 6


def test_a_failing_trial_is_recorded_with_its_error_and_retried_on_rerun(tmp_path):
    s = spec(grid={"train.fail": [False, True]})
    res = run_sweep(s, tmp_path / "s", LocalRunner(FakeStages()))
    states = {o.name: o.state for o in res.outcomes}
    assert states == {"fail=false": "done", "fail=true": "failed"}
    sweep = res.sweep
    err = json.loads((sweep.trial("fail=true") / "error.json").read_text())
    assert err["type"] == "RuntimeError" and "diverged" in err["message"]
    assert trial_state(sweep, res.trials[1]) is State.failed
    failed = [r for r in ResultsStore(sweep.db).rows() if r["status"] == "failed"]
    assert [r["name"] for r in failed] == ["fail=true"]
    again = run_sweep(s, tmp_path / "s", LocalRunner(FakeStages()), retry_failed=False)
    assert again.outcomes == []
    again = run_sweep(s, tmp_path / "s", LocalRunner(FakeStages()))
    assert [o.state for o in again.outcomes] == ["failed"]


def test_changed_config_under_an_existing_name_is_refused_unless_asked(tmp_path):
    run_sweep(spec(grid={"seed": [0]}), tmp_path / "s", LocalRunner(FakeStages()))
    changed = spec(grid={"seed": [0]}, train={"epochs": 3})
    with pytest.raises(UserError, match="different configuration"):
        run_sweep(changed, tmp_path / "s", LocalRunner(FakeStages()))
    res = run_sweep(changed, tmp_path / "s", LocalRunner(FakeStages()), rerun_changed=True)
    assert [o.state for o in res.outcomes] == ["done"]


def test_interrupted_artefact_build_is_discarded_and_rebuilt(tmp_path):
    sweep = SweepDir(tmp_path)
    builds = []

    def crash(out):
        out.mkdir(parents=True)
        (out / "half").write_text("x")
        raise KeyboardInterrupt

    def build(out):
        builds.append(out)
        out.mkdir(parents=True)
        (out / "whole").write_text("y")
        return {"n": 1}

    with pytest.raises(KeyboardInterrupt):
        ensure_artefact(sweep, "model", "k1", crash, {})
    folder, info = ensure_artefact(sweep, "model", "k1", build, {"config": {"a": 1}})
    assert (folder / "whole").exists() and info["info"] == {"n": 1} and info["config"] == {"a": 1}
    assert [p.name for p in (tmp_path / "cache" / "model").glob("k1-*")] == [folder.name]  # old attempt gone
    again, _ = ensure_artefact(sweep, "model", "k1", build, {})
    assert again == folder and len(builds) == 1


def test_pool_runner_gives_the_same_results_without_building_anything_twice(tmp_path):
    local = run_sweep(spec(), tmp_path / "local", LocalRunner(FakeStages()))
    pooled = run_sweep(spec(), tmp_path / "pool", PoolRunner(workers=2))
    assert sorted(o.state for o in pooled.outcomes) == ["done"] * 4
    assert Counter(k for k, *_ in calls(tmp_path / "pool")) == Counter(k for k, *_ in calls(tmp_path / "local"))
    cols = ["trial", "poisoned.z_as_trained", "clean.top1_zeroshot"]
    a = ResultsStore(local.sweep.db).frame()[cols].sort_values("trial").reset_index(drop=True)
    b = ResultsStore(pooled.sweep.db).frame()[cols].sort_values("trial").reset_index(drop=True)
    assert a.equals(b)


def test_a_sweep_folder_from_before_result_json_resumes_without_rerunning(tmp_path):
    """Finished trials of older sweeps kept their record in trials/<name>/metrics.json."""
    res = run_sweep(spec(grid={"seed": [0, 1]}), tmp_path / "s", LocalRunner(FakeStages()))
    for t in res.trials:
        folder = res.sweep.trial(t.name)
        old = json.loads((folder / TRIAL_RESULT_FILE).read_text())
        del old["schema_version"]
        (folder / "metrics.json").write_text(json.dumps(old))
        (folder / TRIAL_RESULT_FILE).unlink()
    n = len(calls(tmp_path / "s"))
    again = run_sweep(spec(grid={"seed": [0, 1]}), tmp_path / "s", LocalRunner(FakeStages()))
    assert again.already_done == 2 and again.outcomes == [] and len(calls(tmp_path / "s")) == n
    ResultsStore(again.sweep.db).sync(again.sweep, again.trials)
    assert sorted(ResultsStore(again.sweep.db).frame()["trial"]) == ["seed=0", "seed=1"]


def test_store_sync_restores_a_row_lost_after_the_result_file(tmp_path):
    res = run_sweep(spec(grid={"seed": [0, 1]}), tmp_path / "s", LocalRunner(FakeStages()))
    store = ResultsStore(res.sweep.db)
    store._write("DELETE FROM trials WHERE name = ?", [("seed=1",)])
    assert len(store.frame()) == 1
    store.sync(res.sweep, res.trials)
    assert sorted(store.frame()["trial"]) == ["seed=0", "seed=1"]


def test_sweeps_given_one_cache_build_each_shared_artefact_once(tmp_path):
    cache = tmp_path / "shared"
    run_sweep(spec(), tmp_path / "a", LocalRunner(FakeStages()), cache=cache)
    other = spec(name="u", grid={"poison.n_poisons": [20, 50], "seed": [0, 1]})
    res = run_sweep(other, tmp_path / "b", LocalRunner(FakeStages()), cache=cache)
    assert [o.state for o in res.outcomes] == ["done"] * 4
    built = Counter(kind for kind, *_ in calls(tmp_path / "a") + calls(tmp_path / "b"))
    # sweep a: 1 corpus, 4 poisoned sets, 6 models; sweep b adds only n_poisons=50 (2 + 2)
    assert (built["corpus"], built["poison"], built["train"], built["eval"]) == (1, 6, 8, 16)
    assert (tmp_path / "b" / "cache").resolve() == cache.resolve()
    with pytest.raises(UserError, match="already points to"):
        run_sweep(spec(), tmp_path / "a", LocalRunner(FakeStages()), cache=tmp_path / "elsewhere")
    run_sweep(spec(), tmp_path / "c", LocalRunner(FakeStages()))
    with pytest.raises(UserError, match="its own cache"):
        run_sweep(spec(), tmp_path / "c", LocalRunner(FakeStages()), cache=cache)


class WatchedStages(FakeStages):
    """Stages whose train reports its progress (as PoisonclipStages passes on train.run's events)."""

    def train(self, config, data, out, on_event=None):
        info = super().train(config, data, out)
        if on_event is not None:
            on_event(("trained", data.parent.name))   # cache/poison/<key> or cache/corpus/<key>
        return info


class KeywordStages(FakeStages):
    def train(self, config, data, out, **options):
        for handler in options.values():
            handler(("trained", out.name))
        return super().train(config, data, out)


def test_the_local_runner_hands_its_training_event_handler_to_stages_that_take_one(tmp_path):
    from poisonclip.experiments.stages import PoisonclipStages, takes_train_events

    assert takes_train_events(PoisonclipStages()) and takes_train_events(WatchedStages())
    assert takes_train_events(KeywordStages()) and not takes_train_events(FakeStages())
    seen = []
    res = run_sweep(spec(), tmp_path / "w", LocalRunner(WatchedStages(), train_events=seen.append))
    assert [o.state for o in res.outcomes] == ["done"] * 4
    # one event per model trained: 4 poisoned + 2 clean (one per seed), none for a reused model
    assert Counter(data for _, data in seen) == {"poison": 4, "corpus": 2}
    again = []
    run_sweep(spec(grid={"poison.n_poisons": [5, 20], "seed": [0, 1, 2]}), tmp_path / "w",
              LocalRunner(WatchedStages(), train_events=again.append))
    assert Counter(data for _, data in again) == {"poison": 2, "corpus": 1}   # only the new seed's models
    kw = []
    run_sweep(spec(), tmp_path / "k", LocalRunner(KeywordStages(), train_events=kw.append))
    assert len(kw) == 6


def test_stages_without_the_event_parameter_still_train_under_a_watching_runner(tmp_path):
    """A Stages written before train took on_event: the runner does not pass it (and does not
    swallow a TypeError the training raises itself)."""
    seen = []
    res = run_sweep(spec(), tmp_path / "s", LocalRunner(FakeStages(), train_events=seen.append))
    assert [o.state for o in res.outcomes] == ["done"] * 4 and seen == []

    class Broken(FakeStages):
        def train(self, config, data, out):
            raise TypeError("a bug inside the training")

    failed = run_sweep(spec(), tmp_path / "b", LocalRunner(Broken(), train_events=seen.append))
    assert {o.state for o in failed.outcomes} == {"failed"}
    assert all("a bug inside the training" in o.error for o in failed.outcomes)

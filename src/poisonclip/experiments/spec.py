"""Sweep specifications: one YAML file that says which trials to run.

A spec has a base config per stage and a grid over any of their fields::

    name: fig4-placement
    corpus: {n_train: 2000, n_test: 300}        # the synthetic corpus (or path: DIR)
    poison: {attack: backdoor, patch_size: 16}
    train:  {model: poisonclip-tiny-rn, epochs: 4}
    eval:   {}
    grid:                                       # a mapping, or a list of mappings (union)
      poison.n_poisons: [5, 10, 20]
      poison.placement: [corner, random]
      seed: [0, 1, 2]

A sub-grid of a list may fix settings of its own under ``base:`` (a mapping of stage sections,
laid over the spec's sections field by field), so one spec can hold trials that differ in more
than the grid's values, e.g. a backdoor and a targeted attack, each with its own fields::

    grid:
      - base: {poison: {target_label: star, n_poisons: 40, patch_size: 32}}
        poison.attack: [backdoor]
        seed: [0, 1, 2]
      - base: {poison: {random_targets: 2, n_poisons: 4, caption_source: templates}}
        poison.attack: [targeted]
        seed: [0, 1, 2]

``seed`` is the replicate axis: it is written into every field named in ``seed_fields``
(default: the poisoning, training and evaluation seeds), so each seed is an independent draw of
poisons (sources, positions, targets), of model initialisation and data order, and of the
evaluation's random choices (test-time patch positions, probe split), as the paper's "8 models
per point".

Parsing is strict (unknown top-level keys, unknown stage sections and non-list grid values are
``UserError``s naming the field) because a typo in a sweep costs hours of compute before anyone
notices. Field names inside stage sections are checked by the stage adapter when trials are
expanded, where the stages' own dataclasses know them.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from poisonclip.errors import UserError

STAGES = ("corpus", "poison", "train", "eval")
SEED_AXIS = "seed"
DEFAULT_SEED_FIELDS = ("poison.seed", "train.seed", "eval.seed")
TOP_LEVEL = {"name", "description", "stages", "seed_fields", "baseline", "grid", "cluster",
             "report", *STAGES}
SCALARS = (str, int, float, bool, type(None))
GRID_BASE = "base"   # the key of a sub-grid's own settings (not an axis: axes are dotted)
DEFAULT_STAGES = "poisonclip"
MAX_SPEC_BYTES = 1 << 20
# A spec's name becomes a folder (runs/<name>) and a cluster job name: one plain path component.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}")
_CLUSTER_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# submitit parameters whose values become shell commands in the job script: code, like stages.
CLUSTER_CODE_KEYS = ("slurm_setup", "setup", "slurm_srun_args", "local_setup")


class _SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``): a few hundred bytes of nested
    aliases expand to billions of nodes once anything walks the data (the "billion laughs")."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: YAML aliases (*name) are not allowed in a sweep "
                                 "spec; write the values out")
        return super().compose_node(parent, index)


@dataclass(frozen=True)
class SweepSpec:
    """A parsed spec. ``base`` maps each stage to its config mapping; ``grids`` is a tuple of
    grids (each an ordered tuple of (axis, values)); their union is the set of trials.
    ``grid_bases[i]`` holds sub-grid i's own settings over ``base`` (stage -> fields; empty
    when it has none); an empty tuple means no sub-grid has any."""

    name: str
    base: Mapping[str, Mapping[str, Any]]
    grids: tuple[tuple[tuple[str, tuple[Any, ...]], ...], ...]
    description: str = ""
    stages: str = "poisonclip"
    seed_fields: tuple[str, ...] = DEFAULT_SEED_FIELDS
    baseline: bool = True
    cluster: Mapping[str, Any] = field(default_factory=dict)
    report: Mapping[str, Any] = field(default_factory=dict)
    source: str = "<dict>"
    grid_bases: tuple[Mapping[str, Mapping[str, Any]], ...] = ()

    def grid_base(self, index: int) -> Mapping[str, Mapping[str, Any]]:
        """Sub-grid ``index``'s own settings (stage -> fields), empty if it has none."""
        return self.grid_bases[index] if index < len(self.grid_bases) else {}

    @property
    def axes(self) -> tuple[str, ...]:
        """Every grid axis, in first-seen order (the table's parameter columns)."""
        seen: dict[str, None] = {}
        for grid in self.grids:
            for axis, _ in grid:
                seen.setdefault(axis, None)
        return tuple(seen)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (what ``parse_spec`` reads back to an equal spec)."""
        grids = []
        for i, grid in enumerate(self.grids):
            g: dict[str, Any] = {GRID_BASE: copy.deepcopy({k: dict(v) for k, v in self.grid_base(i).items()})} \
                if self.grid_base(i) else {}
            g.update((axis, list(values)) for axis, values in grid)
            grids.append(g)
        out: dict[str, Any] = {"name": self.name, "description": self.description,
                               "stages": self.stages, "seed_fields": list(self.seed_fields),
                               "baseline": self.baseline, "cluster": dict(self.cluster),
                               "report": dict(self.report),
                               "grid": grids[0] if len(grids) == 1 else grids}
        for stage in STAGES:
            out[stage] = copy.deepcopy(dict(self.base.get(stage, {})))
        return out


def load_spec(path: str | os.PathLike, allow_custom_stages: bool = False) -> SweepSpec:
    """Read a sweep spec from YAML: a safe loader (no Python objects) that also refuses
    aliases, and a size cap, so reading a spec runs no code and cannot exhaust memory.
    ``allow_custom_stages``: see ``parse_spec``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: sweep spec not found; give a YAML file (see configs/paper/)")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise UserError(f"{path}: {path.stat().st_size} bytes; a sweep spec is at most {MAX_SPEC_BYTES} bytes")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_SpecLoader)  # noqa: S506 - safe subclass
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    default_name = re.sub(r"[^A-Za-z0-9._+=-]", "_", path.stem).lstrip("._+=-") or "sweep"
    return parse_spec(raw, source=str(path), default_name=default_name, allow_custom_stages=allow_custom_stages)


def parse_spec(raw: Any, source: str = "<dict>", default_name: str = "sweep",
               allow_custom_stages: bool = False) -> SweepSpec:
    """Validate a spec given as plain data (the YAML's content).

    A spec is data, except two fields that are code: ``stages: module:object`` (imported and
    called in every worker) and the shell-command parameters of ``cluster:``
    (``CLUSTER_CODE_KEYS``). Both are refused unless ``allow_custom_stages`` says the spec
    is trusted (``poisonclip sweep run --allow-custom-stages``)."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: a sweep spec must be a mapping with stage sections and a grid")
    unknown = sorted(set(map(str, raw)) - TOP_LEVEL)
    if unknown:
        raise UserError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(TOP_LEVEL)}")
    base: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        section = raw.get(stage) or {}
        if not isinstance(section, dict):
            raise UserError(f"{source}: {stage}: must be a mapping of config fields, got {type(section).__name__}")
        base[stage] = copy.deepcopy(section)

    seed_fields = raw.get("seed_fields", list(DEFAULT_SEED_FIELDS))
    if not isinstance(seed_fields, list) or not all(isinstance(s, str) for s in seed_fields):
        raise UserError(f"{source}: seed_fields: must be a list of dotted field names like 'train.seed'")
    for f in seed_fields:
        _check_path(f, source, "seed_fields")

    grids_raw = raw.get("grid")
    if grids_raw is None:
        grids_raw = [{}]
    elif isinstance(grids_raw, dict):
        grids_raw = [grids_raw]
    if not isinstance(grids_raw, list) or not grids_raw:
        raise UserError(f"{source}: grid: must be a mapping (field -> list of values) or a list of such mappings")
    parsed = [_parse_grid(g, source, i if len(grids_raw) > 1 else None, tuple(seed_fields))
              for i, g in enumerate(grids_raw)]
    grids = tuple(axes for axes, _ in parsed)
    grid_bases = tuple(gb for _, gb in parsed) if any(gb for _, gb in parsed) else ()

    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{source}: name: must be a non-empty string")
    name = name.strip()
    if not _NAME.fullmatch(name) or ".." in name:
        raise UserError(f"{source}: name: {json.dumps(name)} becomes a folder name (runs/<name>); use up to 128 "
                        "letters, digits and . _ + = - (no '/', no '..', starting with a letter or digit)")
    if not isinstance(raw.get("cluster") or {}, dict):
        raise UserError(f"{source}: cluster: must be a mapping")
    cluster = dict(raw.get("cluster") or {})
    _check_cluster(cluster, source, allow_custom_stages)
    baseline = raw.get("baseline", True)
    if not isinstance(baseline, bool):
        raise UserError(f"{source}: baseline: must be true or false (train clean models with the same seeds)")
    stages = raw.get("stages", DEFAULT_STAGES)
    if not isinstance(stages, str):
        raise UserError(f"{source}: stages: must be 'poisonclip' or 'module:object'")
    if stages not in (DEFAULT_STAGES, "") and not allow_custom_stages:
        raise UserError(f"{source}: stages: {json.dumps(stages)} imports and runs Python code named by the spec; "
                        "run it only if you trust the spec, with --allow-custom-stages "
                        "(library: allow_custom_stages=True)")
    return SweepSpec(name=name, base=base, grids=grids,
                     description=str(raw.get("description") or ""), stages=stages or DEFAULT_STAGES,
                     seed_fields=tuple(seed_fields), baseline=baseline,
                     cluster=cluster, report=_check_report(raw.get("report") or {}, source),
                     source=source, grid_bases=grid_bases)


def _check_cluster(cluster: Mapping[str, Any], source: str, allow_code: bool) -> None:
    """``cluster:`` goes to submitit's ``update_parameters``: identifiers mapping to scalars,
    lists of scalars, or one level of mapping to scalars; no control characters (a newline in a
    value would start a new line of the job script)."""
    def scalar_ok(v: Any, where: str) -> None:
        if not isinstance(v, SCALARS):
            raise UserError(f"{source}: {where}: must be a number, string or boolean, got {json.dumps(v, default=str)}")
        if isinstance(v, str) and _CONTROL.search(v):
            raise UserError(f"{source}: {where}: control characters (newlines, escapes) are not allowed")

    for key, value in cluster.items():
        if not isinstance(key, str) or not _CLUSTER_KEY.fullmatch(key):
            raise UserError(f"{source}: cluster: {json.dumps(key, default=str)} is not a parameter name "
                            "(letters, digits, _)")
        where = f"cluster.{key}"
        if key in CLUSTER_CODE_KEYS and not allow_code:
            raise UserError(f"{source}: {where}: becomes shell commands in the job script; run it only if you "
                            "trust the spec, with --allow-custom-stages (library: allow_custom_stages=True)")
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str) or _CONTROL.search(k) or not k.strip():
                    raise UserError(f"{source}: {where}: key {json.dumps(k, default=str)} is not a plain name")
                scalar_ok(v, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                scalar_ok(v, f"{where}[{i}]")
        else:
            scalar_ok(value, where)


def read_spec_name(path: str | os.PathLike) -> str | None:
    """The ``name`` recorded in a sweep folder's spec.yaml (None if unreadable)."""
    try:   # our own file (safe_dump); only its name is read, so shared nodes are never expanded
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    name = raw.get("name") if isinstance(raw, dict) else None
    return name if isinstance(name, str) else None


def _check_path(axis: str, source: str, where: str) -> None:
    if axis == SEED_AXIS:
        return
    stage, _, rest = axis.partition(".")
    if stage not in STAGES or not rest or any(not part for part in rest.split(".")):
        raise UserError(f"{source}: {where}: '{axis}' is not a field; use 'seed' or "
                        f"'<stage>.<field>' with stage one of {list(STAGES)} (e.g. poison.n_poisons)")


def _parse_grid(grid: Any, source: str, index: int | None, seed_fields: tuple[str, ...] = DEFAULT_SEED_FIELDS
                ) -> tuple[tuple[tuple[str, tuple[Any, ...]], ...], dict[str, dict[str, Any]]]:
    """(axes, the sub-grid's own base settings)."""
    where = "grid" if index is None else f"grid[{index}]"
    if not isinstance(grid, dict):
        raise UserError(f"{source}: {where}: must be a mapping of field -> list of values")
    grid_base = _parse_grid_base(grid.get(GRID_BASE), source, where)
    axes = []
    for axis, values in grid.items():
        axis = str(axis)
        if axis == GRID_BASE:
            continue
        _check_path(axis, source, where)
        if not isinstance(values, list) or not values:
            raise UserError(f"{source}: {where}.{axis}: must be a non-empty list of values, e.g. [1, 2]")
        for v in values:
            if not isinstance(v, SCALARS):
                raise UserError(f"{source}: {where}.{axis}: values must be scalars (numbers, strings, "
                                f"booleans), got {json.dumps(v, default=str)}")
        if len({json.dumps(v) for v in values}) != len(values):
            raise UserError(f"{source}: {where}.{axis}: repeated values {values}; list each once")
        for path in (seed_fields if axis == SEED_AXIS else (axis,)):   # the seed axis sets each seed field
            stage, _, field_path = path.partition(".")
            if field_path.split(".")[0] in grid_base.get(stage, {}):
                raise UserError(f"{source}: {where}: '{path}' is both set by the axis '{axis}' and in "
                                f"{where}.{GRID_BASE}; give it in one place")
        axes.append((axis, tuple(values)))
    return tuple(axes), grid_base


def _parse_grid_base(raw: Any, source: str, where: str) -> dict[str, dict[str, Any]]:
    """A sub-grid's ``base``: stage sections (mappings of fields) over the spec's; the fields
    themselves are checked with the rest of the stage's config when trials are expanded."""
    if raw is None:
        return {}
    where = f"{where}.{GRID_BASE}"
    if not isinstance(raw, dict):
        raise UserError(f"{source}: {where}: must be a mapping of stage sections, e.g. "
                        "{poison: {n_poisons: 40}}")
    out: dict[str, dict[str, Any]] = {}
    for stage, section in raw.items():
        if stage not in STAGES:
            raise UserError(f"{source}: {where}: '{stage}' is not a stage; use {list(STAGES)}")
        if not isinstance(section, dict):
            raise UserError(f"{source}: {where}.{stage}: must be a mapping of config fields, "
                            f"got {type(section).__name__}")
        for name in section:
            if not isinstance(name, str) or not name or "." in name:
                raise UserError(f"{source}: {where}.{stage}: {json.dumps(name, default=str)} is not a field name")
        if section:
            out[stage] = copy.deepcopy(section)
    return out


REPORT_TABLES = ("settings", "attacks")
_REPORT_KEYS = {"axes", "title", "table"}


def _check_report(report: Any, source: str) -> dict[str, Any]:
    """``report:``: ``axes`` (field per figure role), ``title`` (the page's), ``table``
    (``settings``: a row per setting, the default; ``attacks``: clean vs each attack, the
    demo's table)."""
    if not isinstance(report, dict):
        raise UserError(f"{source}: report: must be a mapping")
    unknown = sorted(set(map(str, report)) - _REPORT_KEYS)
    if unknown:
        raise UserError(f"{source}: report: unknown key(s) {unknown}; allowed: {sorted(_REPORT_KEYS)}")
    axes = report.get("axes") or {}
    if not isinstance(axes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in axes.items()):
        raise UserError(f"{source}: report.axes: must map figure roles to fields, e.g. {{poisons: poison.n_poisons}}")
    if "title" in report and (not isinstance(report["title"], str) or not report["title"].strip()):
        raise UserError(f"{source}: report.title: must be a non-empty string")
    if report.get("table", "settings") not in REPORT_TABLES:
        raise UserError(f"{source}: report.table: {json.dumps(report.get('table'), default=str)} is not one of "
                        f"{list(REPORT_TABLES)}")
    return copy.deepcopy(report)


def set_path(config: dict[str, dict[str, Any]], axis: str, value: Any) -> None:
    """Set ``stage.field[.sub...]`` in a per-stage config mapping, creating sub-mappings."""
    parts = axis.split(".")
    node: dict[str, Any] = config.setdefault(parts[0], {})
    for part in parts[1:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"grid: '{axis}' goes through '{part}', which is not a mapping in the base config")
        node = child
    node[parts[-1]] = value


def get_path(config: Mapping[str, Any], axis: str, default: Any = None) -> Any:
    node: Any = config
    for part in axis.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node

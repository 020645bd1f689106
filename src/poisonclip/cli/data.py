"""``poisonclip data``: make the embedded corpus, inspect and convert datasets."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from poisonclip.cli.common import App, console, safe_text
from poisonclip.errors import UserError
from poisonclip.io_utils import OutputKind

CONVERT_FILE = "convert.json"
# What `data convert --overwrite` may replace: a folder holding a valid convert.json (written last).
CONVERTED_KIND = OutputKind("converted dataset (`poisonclip data convert`)",
                            ((CONVERT_FILE, ("converter", "source", "format", "n_samples")),))

app = App(help="Datasets: generate the embedded corpus, inspect or convert CSV/WebDataset data.")


class Format(str, Enum):
    csv = "csv"
    webdataset = "webdataset"
    both = "both"


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Folder to create (must not exist unless --overwrite).")],
    n: Annotated[Optional[int], typer.Option(help="Training samples (default: the demo's size).")] = None,
    n_test: Annotated[Optional[int], typer.Option(help="Labelled test samples.")] = None,
    classes: Annotated[Optional[int], typer.Option(help="Number of object classes.")] = None,
    resolution: Annotated[Optional[int], typer.Option(
        help="Test/probe image side in pixels; training images have sides of 1-1.3x it.")] = None,
    seed: Annotated[int, typer.Option(help="Same seed, byte-identical files.")] = 0,
    fmt: Annotated[Format, typer.Option("--format", help="Which training formats to write.")] = Format.both,
    shard_size: Annotated[int, typer.Option(help="Samples per WebDataset shard.")] = 10_000,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Generate the embedded captioned-image corpus (train CSV + shards, labelled test split)."""
    import dataclasses

    from poisonclip.data.corpus import write_corpus
    from poisonclip.data.synthetic import SynthConfig

    changes = {k: v for k, v in dict(n_train=n, n_test=n_test, n_classes=classes,
                                      resolution=resolution).items() if v is not None}
    for k, v in changes.items():
        if v <= 0:
            raise UserError(f"--{k.replace('_', '-')} must be positive, got {v}")
    cfg = dataclasses.replace(SynthConfig(seed=seed), **changes)
    formats = ("csv", "webdataset") if fmt is Format.both else (fmt.value,)
    paths = write_corpus(cfg, out, formats=formats, shard_size=shard_size, overwrite=overwrite)
    console.print(f"wrote {cfg.n_train} training and {cfg.n_test} test samples to [bold]{paths.root}[/]")


@app.command()
def info(
    source: Annotated[str, typer.Argument(help="A .csv/.tsv table, a folder of shards, or a shard pattern.")],
    img_key: Annotated[str, typer.Option(help="Image-path column of a CSV.")] = "filepath",
    caption_key: Annotated[str, typer.Option(help="Caption column of a CSV.")] = "title",
) -> None:
    """Count readable samples and report skipped ones per reason."""
    from poisonclip.data import CsvFormat, SkipReport, read_dataset

    report = SkipReport()
    n = sum(1 for _ in read_dataset(source, CsvFormat(img_key, caption_key), report))
    console.print(safe_text(f"{n} readable samples; {report.summary()}"), markup=False, highlight=False)


@app.command()
def convert(
    source: Annotated[str, typer.Argument(help="Input dataset (CSV/TSV or shards).")],
    out: Annotated[Path, typer.Option(help="Output folder (created atomically).")],
    to: Annotated[Format, typer.Option(help="Output format (csv or webdataset).")],
    img_key: Annotated[str, typer.Option(help="Image-path column of a CSV input.")] = "filepath",
    caption_key: Annotated[str, typer.Option(help="Caption column of a CSV input.")] = "title",
    shard_size: Annotated[int, typer.Option(help="Samples per shard.")] = 10_000,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Convert between CSV/TSV and WebDataset shards, keeping keys, captions and image bytes."""
    from poisonclip.contracts import TRAIN_TABLE
    from poisonclip.data import CsvFormat, SkipReport, read_dataset, write_csv, write_shards
    from poisonclip.io_utils import atomic_dir, atomic_write_json, input_paths

    if to is Format.both:
        raise UserError("--to takes csv or webdataset")
    report, writing = SkipReport(), SkipReport()
    n = 0

    def counted():
        nonlocal n
        for s in read_dataset(source, CsvFormat(img_key, caption_key), report):
            n += 1
            yield s

    with atomic_dir(out, overwrite=overwrite, kind=CONVERTED_KIND, inputs=input_paths(source)) as tmp:
        if to is Format.csv:
            write_csv(counted(), tmp, name=TRAIN_TABLE, report=writing)
        else:
            write_shards(counted(), tmp, shard_size=shard_size, report=writing)
        report.update(writing)  # repeated / empty keys the writer left out
        atomic_write_json(tmp / CONVERT_FILE, {   # the completion marker, last
            "converter": "poisonclip data convert", "source": str(source), "format": to.value,
            "n_samples": n - sum(writing.values()), "skipped": dict(sorted(report.items()))})
    console.print(safe_text(f"wrote {out}; {report.summary()}"), markup=False, highlight=False)


def register(root: App) -> None:
    root.add_typer(app, name="data")

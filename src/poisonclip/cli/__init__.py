"""The ``poisonclip`` command line: one sub-app or command per pipeline stage.

Each stage module maps its options once into the stage's frozen config and calls one
library function; nothing below this package sees typer.
"""

from __future__ import annotations

from poisonclip.cli import data as _data
from poisonclip.cli import defend as _defend
from poisonclip.cli import demo as _demo
from poisonclip.cli import detect as _detect
from poisonclip.cli import evaluate as _evaluate
from poisonclip.cli import poison as _poison
from poisonclip.cli import report as _report
from poisonclip.cli import sweep as _sweep
from poisonclip.cli import train as _train
from poisonclip.cli.common import App

app = App(help="Poisoning and backdooring contrastive image-text models (Carlini & Terzis, ICLR 2022).")

for _module in (_data, _poison, _train, _evaluate, _detect, _defend, _demo, _sweep, _report):
    _module.register(app)


def main() -> None:
    app()

"""The trigger lives in the model's input space: on real photos of any shape, the tensor the
model receives carries the exact checkerboard, at train time (the written poison through
open_clip's training transform) and at test time (the evaluator's trigger after the model's
resize and centre crop)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import pytest
from PIL import Image

from poisonclip.attacks import triggers
from poisonclip.attacks.api import BackdoorConfig, poison
from poisonclip.attacks.manifest import read_manifest
from poisonclip.data.csv_io import write_csv
from poisonclip.data.sample import Sample
from poisonclip.contracts import BackdoorRecord
from poisonclip.evaluate.backdoor import trigger_fn
from poisonclip.evaluate.embed import LoadedModel, embed_images, input_size, split_preprocess

skdata = pytest.importorskip("skimage.data")

# Identity normalisation, so tensor values are the pixels / 255.
_PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def _photos() -> dict[str, Image.Image]:
    """Real photos of three shapes: landscape 3:2, portrait 2:3, and a wide 640x427 one."""
    coffee = Image.fromarray(skdata.coffee())             # 600x400
    return {"landscape": coffee, "portrait": coffee.transpose(Image.Transpose.ROTATE_90),
            "rocket": Image.fromarray(skdata.rocket()), "square": Image.fromarray(skdata.astronaut())}


def _pixels(x) -> np.ndarray:
    """A CHW tensor in [0, 1] back to HWC uint8."""
    return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


class _RecordingModel:
    """Stands in for a CLIP model: records the batches the evaluator feeds it."""

    def __init__(self) -> None:
        self.inputs: list = []

    def encode_image(self, x, normalize: bool = True):
        import torch

        self.inputs.append(x.clone())
        return torch.nn.functional.normalize(torch.ones(x.shape[0], 4), dim=-1)


def _loaded(resolution: int) -> LoadedModel:
    tf = open_clip.image_transform(resolution, is_train=False, **_PLAIN)
    return LoadedModel(_RecordingModel(), tf, None, "recording", Path("x"), "0" * 64, "cpu")


@pytest.mark.parametrize("resolution,patch,want_px", [(224, 16, 16), (32, 16, 2), (64, 32, 9)])
@pytest.mark.parametrize("placement", ["corner", "random"])
def test_the_model_receives_the_exact_checkerboard_on_photos_of_any_shape(resolution, patch, want_px, placement):
    lm = _loaded(resolution)
    photos = _photos()
    positions: list[tuple[int, int, int]] = []
    spec = BackdoorRecord("cat", patch, placement)
    trigger = trigger_fn(spec, placement, np.random.default_rng(0), positions)
    embed_images(lm, photos.values(), batch_size=3, trigger=trigger)
    inputs = np.concatenate([t.numpy() for t in lm.model.inputs])
    assert inputs.shape == (len(photos), 3, resolution, resolution)
    geometry, _ = split_preprocess(lm.preprocess)
    for (name, photo), x, (px, py, size) in zip(photos.items(), inputs, positions):
        seen = _pixels(__import__("torch").from_numpy(x))
        assert size == want_px, name
        if placement == "corner":
            assert (px, py) == (0, 0)
        assert np.array_equal(seen[py:py + size, px:px + size], triggers.checkerboard(size)), name
        # everything else is the model's own view of the photo, untouched
        clean = np.asarray(geometry(photo))
        mask = np.ones(seen.shape[:2], bool)
        mask[py:py + size, px:px + size] = False
        assert np.array_equal(seen[mask], clean[mask]), name
    if placement == "random":
        assert len({(x, y) for x, y, _ in positions}) > 1


def test_input_size_is_the_side_the_model_receives():
    assert input_size(_loaded(32)) == 32 and input_size(_loaded(224)) == 224


@dataclass
class _Photos:
    csv: Path
    samples: list


@pytest.fixture(scope="module")
def photo_table(tmp_path_factory) -> _Photos:
    root = tmp_path_factory.mktemp("photos")
    samples = []
    for i, (name, im) in enumerate(_photos().items()):
        for j in range(3):  # several rows per photo, so the poisons have sources to draw from
            samples.append(Sample.from_pil(f"{name}{j}", im, f"a photo of a {'cat' if i == 0 else 'thing'} {j}",
                                           meta={"label": 0 if i == 0 else 1}, ext="png"))
    write_csv(samples, root, name="train.tsv", extra_columns=("label",))
    return _Photos(root / "train.tsv", samples)


@pytest.mark.parametrize("resolution,patch", [(224, 16), (64, 32)])
@pytest.mark.parametrize("crop_scale", [1.0, 0.9])
def test_a_poison_written_for_training_reaches_the_model_with_its_patch(photo_table, tmp_path, resolution, patch,
                                                                        crop_scale):
    """Through open_clip's own training transform (RandomResizedCrop at the configured crop
    scale): at scale 1 the patch arrives pixel for pixel; at the paper's 0.9-1 the crop may
    move and resample it slightly, but it never disappears into grey as it did when a photo
    was patched at its stored size and then downscaled."""
    res = poison(BackdoorConfig(data=str(photo_table.csv), out=str(tmp_path / "bd"), target_label="cat",
                                n_poisons=4, patch_size=patch, resolution=resolution, seed=3,
                                no_classnames=True, exclude_labels=("0",)))
    rows = read_manifest(res.out)
    train_tf = open_clip.image_transform(resolution, is_train=True, aug_cfg={"scale": (crop_scale, 1.0)}, **_PLAIN)
    import torch

    torch.manual_seed(0)
    size = triggers.patch_pixels(patch, resolution)
    board = triggers.checkerboard(size).astype(np.float64)
    for r in rows:
        img = Image.open(res.out / r.location)
        assert img.size == (resolution, resolution) and r.resolution == resolution and r.trigger_size == size
        for _ in range(3):
            seen = _pixels(train_tf(img))
            patch_seen = seen[:size, :size].astype(np.float64)
            if crop_scale == 1.0:
                assert np.array_equal(seen, np.asarray(img.convert("RGB")))
                assert np.array_equal(patch_seen, board)
            else:
                # shifted by a pixel or resampled, but still a high-contrast pattern, not grey
                assert patch_seen.std() > 40, patch_seen.std()


def test_the_old_way_downscaled_the_checkerboard_into_grey():
    """The failure this geometry prevents, measured: a 32px (at 224) patch pasted on a
    224x224 photo and then resized to a 32px model input is a flat grey square."""
    photo = _photos()["square"].resize((224, 224))
    patched = triggers.apply(photo, triggers.place(photo.size, 32, "corner"))
    seen = _pixels(open_clip.image_transform(32, is_train=False, **_PLAIN)(patched))[:4, :4]
    assert seen.std() < 10 and abs(seen.mean() - 127.5) < 10


def test_sweeps_write_backdoor_poisons_at_the_trained_models_input_size(tmp_path):
    """A sweep links the poisons' resolution to its model (unless the spec sets one), so a
    32px toy model is not trained on poisons written for 224px, and the link is part of the
    poisoned set's content key."""
    from poisonclip.experiments.spec import parse_spec
    from poisonclip.experiments.stages import PoisonclipStages
    from poisonclip.experiments.trials import expand

    stages = PoisonclipStages()
    base = {"name": "g", "corpus": {"n_train": 10},
            "poison": {"attack": "backdoor", "target_label": "circle", "n_poisons": 2},
            "train": {"model": "poisonclip-test"}, "grid": {"seed": [0]}}
    (trial,) = expand(parse_spec(base), stages.resolve, stages.link)
    assert trial.config["poison"]["resolution"] == 32
    base["poison"]["resolution"] = 224
    (fixed,) = expand(parse_spec(base), stages.resolve, stages.link)
    assert fixed.config["poison"]["resolution"] == 224 and fixed.keys.poison != trial.keys.poison

"""`python src/predict.py ckpt_path=… input=…`: your own images through a checkpoint's network, top-5 to a CSV."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from tests.conftest import best_checkpoint, run_entry
from wrncifar.data.transforms import eval_transform
from wrncifar.run.checkpoints import CheckpointError
from wrncifar.run.config_validation import ConfigError
from wrncifar.run.entry import run
from wrncifar.run.prediction import PREDICTIONS_FILE, predict_images, prediction_table

CIFAR_IMAGES = 8


def run_config(run_dir: Path) -> DictConfig:
    """The config the training run saved, its speed switches (`auto` in the configs) off: these tests build its
    data module and network directly, without the entry points that resolve them."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    for key in ("data.on_device", "data.drop_last", "model.compile", "model.channels_last"):
        OmegaConf.update(cfg, key, False)
    return cfg


def run_test_images(run_dir: Path, count: int) -> torch.Tensor:
    """The first `count` test images (uint8 N×3×32×32) of the data the run trained on."""
    datamodule = instantiate(run_config(run_dir).data)
    datamodule.setup("test")
    return datamodule.test_set.images[:count]


def checkpoint_net(run_dir: Path) -> torch.nn.Module:
    """The network of the run's best checkpoint, rebuilt from the run's config without the code under test."""
    net = instantiate(run_config(run_dir).model.net, _convert_="all")
    state_dict = torch.load(best_checkpoint(run_dir), weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state_dict.items() if k.startswith("net.")})
    return net.eval()


def normalised(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as the test loader feeds them to the network (the data module's eval transform)."""
    return torch.stack([eval_transform()(image) for image in images])


def reference_probabilities(run_dir: Path, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """Class probabilities of uint8 `images` as the evaluation pipeline computes them; `flip` averages in those of
    the mirror images."""
    net, x = checkpoint_net(run_dir), normalised(images)
    with torch.no_grad():
        probs = net(x).softmax(dim=1)
        if flip:
            probs = (probs + net(x.flip(-1)).softmax(dim=1)) / 2
    return probs


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def assert_top5_matches(row: dict[str, str], probs: torch.Tensor) -> None:
    top = probs.topk(5)
    assert [row[f"class_{k}"] for k in range(1, 6)] == [f"class_{i:03d}" for i in top.indices.tolist()]
    assert [float(row[f"prob_{k}"]) for k in range(1, 6)] == pytest.approx(top.values.tolist(), abs=2e-6)


@pytest.fixture(scope="module")
def image_folder(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images as a user has them: CIFAR test images as PNGs in a subfolder, a photo-sized JPEG, a grayscale and an
    RGBA PNG, a text file and a truncated PNG."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (folder / "cifar").mkdir()
    for i, image in enumerate(run_test_images(trained_run, CIFAR_IMAGES)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / "cifar" / f"img_{i:02d}.png")
    Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(folder / "photo.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), "RGBA").save(folder / "logo.png")
    (folder / "notes.txt").write_text("shopping list")
    (folder / "broken.png").write_bytes((folder / "cifar" / "img_00.png").read_bytes()[:100])
    return folder


@pytest.fixture(scope="module")
def folder_prediction(trained_run: Path, image_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("predict")
    args = [f"ckpt_path={best_checkpoint(trained_run)}", f"input={image_folder}", f"hydra.run.dir={out}"]
    return out, run_entry("predict.py", args)


@pytest.mark.slow
def test_a_folder_is_predicted_image_by_image_and_bad_files_are_named(folder_prediction) -> None:
    out, result = folder_prediction
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = read_csv(out / PREDICTIONS_FILE)
    expected = sorted([f"cifar/img_{i:02d}.png" for i in range(CIFAR_IMAGES)] + ["gray.png", "logo.png", "photo.jpg"])
    assert [r["file"] for r in rows] == expected
    assert list(rows[0]) == ["file"] + [f"{c}_{k}" for k in range(1, 6) for c in ("class", "prob")]
    for row in rows:
        probs = [float(row[f"prob_{k}"]) for k in range(1, 6)]
        assert probs == sorted(probs, reverse=True) and probs[-1] >= 0 and probs[0] <= 1
    output = result.stdout + result.stderr
    assert "broken.png: a damaged or truncated image (OSError: image file is truncated)" in output
    assert "notes.txt: not an image PIL can read" in output
    assert "Converted to RGB: 1 grayscale (L), 1 RGBA (the alpha channel composited onto white)" in output
    assert "Traceback" not in output


@pytest.mark.slow
def test_the_printed_table_shows_the_csvs_best_classes(folder_prediction) -> None:
    out, result = folder_prediction
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("file") and "top-1" in line)
    first = read_csv(out / PREDICTIONS_FILE)[0]
    assert lines[header + 1].split() == [
        first["file"],
        *(v for k in (1, 2, 3) for v in (first[f"class_{k}"], f"{float(first[f'prob_{k}']):.3f}")),
    ]
    assert "2 file(s) could not be read (named above)" in result.stdout


@pytest.mark.slow
def test_cifar_pngs_get_the_probabilities_of_the_evaluation_pipeline(trained_run: Path, folder_prediction) -> None:
    """A 32×32 PNG is the test image itself: its prediction is the network's on the test loader's tensor."""
    out, _ = folder_prediction
    rows = {r["file"]: r for r in read_csv(out / PREDICTIONS_FILE)}
    probs = reference_probabilities(trained_run, run_test_images(trained_run, CIFAR_IMAGES))
    for i in range(CIFAR_IMAGES):
        assert_top5_matches(rows[f"cifar/img_{i:02d}.png"], probs[i])


@pytest.mark.slow
def test_an_npz_with_flip_tta_in_small_batches_from_relative_paths(trained_run: Path, tmp_path: Path) -> None:
    images = run_test_images(trained_run, 10)
    names = np.array([f"sample {i}" for i in range(10)])
    np.savez(tmp_path / "mine.npz", images=images.permute(0, 2, 3, 1).numpy(), names=names)
    args = [
        f"ckpt_path={best_checkpoint(trained_run)}",
        "input=mine.npz",  # relative to the folder the command runs in
        "output=results/flip.csv",
        "tta=flip",
        "batch_size=3",
        "top_k=5",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = run_entry("predict.py", args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = read_csv(tmp_path / "results" / "flip.csv")
    assert [r["file"] for r in rows] == names.tolist()
    flipped = reference_probabilities(trained_run, images, flip=True)
    for row, probs in zip(rows, flipped, strict=True):
        assert_top5_matches(row, probs)
    plain = reference_probabilities(trained_run, images)
    assert not torch.allclose(plain, flipped, atol=1e-4), "TTA changes the probabilities"


@pytest.mark.slow
def test_input_and_output_paths_are_read_as_typed_whatever_their_characters(
    trained_run: Path, image_folder: Path, tmp_path: Path
) -> None:
    awkward = tmp_path / "holiday 2026, day [1] (it's) lr=0.1"
    shutil.copytree(image_folder / "cifar", awkward / "photos")
    output = awkward / "out, final" / "predictions.csv"
    args = [
        f"ckpt_path={best_checkpoint(trained_run)}",
        f"input={awkward / 'photos'}",
        f"output={output}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = run_entry("predict.py", args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [row["file"] for row in read_csv(output)] == [f"img_{i:02d}.png" for i in range(CIFAR_IMAGES)]


@pytest.mark.slow
def test_an_empty_folder_is_one_message_and_exit_1(trained_run: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    args = [
        f"ckpt_path={best_checkpoint(trained_run)}",
        f"input={tmp_path / 'empty'}",
        f"hydra.run.dir={tmp_path / 'r'}",
    ]
    result = run_entry("predict.py", args)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert f"input={tmp_path / 'empty'} is an empty folder: there are no images to predict" in output
    assert "Traceback" not in output
    assert not (tmp_path / "r").exists(), "a run that predicted nothing leaves no folder"


def test_a_folder_without_a_readable_image_names_every_file_and_exits_1(
    trained_run: Path, make_config, tmp_path: Path
) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "bad" / "b.txt").write_text("text")
    cfg = make_config([f"ckpt_path={best_checkpoint(trained_run)}", f"input={tmp_path / 'bad'}"], "predict.yaml")
    with pytest.raises(ConfigError, match=r"no image could be read \(a\.png: .*; b\.txt: not an image PIL can read"):
        predict_images(cfg)
    with pytest.raises(SystemExit) as stopped:
        run(predict_images, cfg)
    assert stopped.value.code == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["input=null"], r"input is required \(the images to classify\): python src/predict.py ckpt_path="),
        (["ckpt_path=null"], "ckpt_path is required"),
        (["ckpt_path=/nonexistent/last.ckpt"], "checkpoint /nonexistent/last.ckpt does not exist"),
        (["top_k=0"], "top_k must be a positive integer, got 0"),
        (["batch_size=-1"], "batch_size must be a positive integer, got -1"),
        (["tta=mirror"], r"tta: expected one of \['none', 'flip'\], got 'mirror'"),
        (["device=cuda:99"], "device=cuda:99, but torch .* sees no such CUDA GPU: use device=cpu"),
    ],
)
def test_bad_settings_are_one_clear_error(
    trained_run: Path, make_config, tmp_path: Path, overrides: list[str], message: str
) -> None:
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    base = [f"ckpt_path={best_checkpoint(trained_run)}", f"input={tmp_path / 'x.png'}"]
    with pytest.raises((ConfigError, CheckpointError), match=message):
        predict_images(make_config([*base, *overrides], "predict.yaml"))


def test_a_crafted_run_folder_runs_none_of_its_code(trained_run: Path, make_config, tmp_path: Path) -> None:
    run_dir, marker = tmp_path / "crafted", tmp_path / "marker"
    shutil.copytree(trained_run, run_dir)
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    config["model"]["net"] = {"_target_": "builtins.exec", "_args_": [f"open('{marker}', 'w').write('ran')"]}
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    cfg = make_config([f"ckpt_path={best_checkpoint(run_dir)}", f"input={tmp_path / 'x.png'}"], "predict.yaml")
    with pytest.raises(ConfigError, match=r"model\.net\._target_='builtins\.exec'"):
        predict_images(cfg)
    assert not marker.exists()


def test_in_process_predictions_go_to_a_given_folder(trained_run: Path, make_config, tmp_path: Path) -> None:
    images = run_test_images(trained_run, 3)
    np.savez(tmp_path / "three.npz", images=images.permute(0, 2, 3, 1).numpy())
    (tmp_path / "out").mkdir()
    overrides = [
        f"ckpt_path={best_checkpoint(trained_run)}",
        f"input={tmp_path / 'three.npz'}",
        f"output={tmp_path / 'out'}",
        "top_k=2",
        "device=cpu",
    ]
    assert predict_images(make_config(overrides, "predict.yaml")) == {"images": 3, "skipped": 0}
    rows = read_csv(tmp_path / "out" / PREDICTIONS_FILE)
    assert [r["file"] for r in rows] == ["three.npz[0]", "three.npz[1]", "three.npz[2]"]
    assert list(rows[0]) == ["file", "class_1", "prob_1", "class_2", "prob_2"]


def test_no_name_in_the_csv_runs_as_a_spreadsheet_formula(trained_run: Path, make_config, tmp_path: Path) -> None:
    """Image names are data: one starting like a formula gets a leading ' (shown as text), a number stays as it is."""
    names = ['=HYPERLINK("http://x","y")', "@SUM(1)", "+cmd|' /C calc'!A0", "-2+3", "\tx", "-0.5", "cat.png"]
    images = run_test_images(trained_run, len(names))
    np.savez(tmp_path / "named.npz", images=images.permute(0, 2, 3, 1).numpy(), names=np.array(names))
    overrides = [
        f"ckpt_path={best_checkpoint(trained_run)}",
        f"input={tmp_path / 'named.npz'}",
        f"output={tmp_path / 'out.csv'}",
        "device=cpu",
    ]
    predict_images(make_config(overrides, "predict.yaml"))
    written = [row["file"] for row in read_csv(tmp_path / "out.csv")]
    assert written == [f"'{name}" for name in names[:5]] + ["-0.5", "cat.png"]


def test_predictions_replace_earlier_predictions_but_no_other_file(
    trained_run: Path, make_config, tmp_path: Path
) -> None:
    """An exported model at `output=` stays as it is; the CSV of an earlier prediction is replaced (the same command
    run again), and `output=<new folder>/` is a folder, not a file named like it."""
    np.savez(tmp_path / "two.npz", images=run_test_images(trained_run, 2).permute(0, 2, 3, 1).numpy())
    model = tmp_path / "x" / "model.torchscript.pt"
    model.parent.mkdir()
    model.write_bytes(b"an exported model")
    base = [f"ckpt_path={best_checkpoint(trained_run)}", f"input={tmp_path / 'two.npz'}", "device=cpu"]
    with pytest.raises(ConfigError, match=r"output: .*model\.torchscript\.pt already exists and is not an earlier"):
        predict_images(make_config([*base, f"output={model}"], "predict.yaml"))
    assert model.read_bytes() == b"an exported model"
    for top_k in (5, 2):  # a CSV of other columns is still an earlier prediction
        predict_images(make_config([*base, f"output={tmp_path / 'mine.csv'}", f"top_k={top_k}"], "predict.yaml"))
    assert list(read_csv(tmp_path / "mine.csv")[0]) == ["file", "class_1", "prob_1", "class_2", "prob_2"]
    predict_images(make_config([*base, f"output={tmp_path / 'new'}/"], "predict.yaml"))
    assert len(read_csv(tmp_path / "new" / PREDICTIONS_FILE)) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_predictions_on_a_gpu_match_the_cpus(trained_run: Path, make_config, tmp_path: Path) -> None:
    images = run_test_images(trained_run, 20)
    np.savez(tmp_path / "x.npz", images=images.permute(0, 2, 3, 1).numpy())
    base = [f"ckpt_path={best_checkpoint(trained_run)}", f"input={tmp_path / 'x.npz'}", "batch_size=7", "tta=flip"]
    predict_images(make_config([*base, "device=cuda", f"output={tmp_path / 'gpu.csv'}"], "predict.yaml"))
    reference = reference_probabilities(trained_run, images, flip=True)
    for row, probs in zip(read_csv(tmp_path / "gpu.csv"), reference, strict=True):
        assert row["class_1"] == f"class_{int(probs.argmax()):03d}"
        assert float(row["prob_1"]) == pytest.approx(float(probs.max()), abs=1e-4)


def test_the_table_shortens_long_names_and_counts_the_rest() -> None:
    rows = [
        (f"{'deep/' * 12}img_{i}.png", [("cat", 0.9), ("dog", 0.05), ("fox", 0.01), ("owl", 0.0)]) for i in range(25)
    ]
    table = prediction_table(rows, skipped=0).splitlines()
    assert table[0].split() == ["file", "top-1", "top-2", "top-3"]
    assert table[1].startswith("…") and table[1].split()[1:] == ["cat", "0.900", "dog", "0.050", "fox", "0.010"]
    assert len(table) == 1 + 20 + 1 and table[-1] == "… and 5 more"

"""`python src/export.py ckpt_path=… format=onnx|torchscript|state_dict`: a checkpoint's network as a file to deploy,
giving the checkpoint's logits when loaded the way a user loads it."""

from __future__ import annotations

import json
import re
import shutil
import sys
import warnings
from pathlib import Path

import onnxruntime
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import ROOT, best_checkpoint, run_entry
from tests.run.test_prediction import checkpoint_net, normalised, run_config, run_test_images
from wrncifar.data.transforms import CIFAR100_MEAN, CIFAR100_STD
from wrncifar.models.wideresnet import WideResNet
from wrncifar.run import export
from wrncifar.run.config_validation import ConfigError
from wrncifar.run.export import ExportCheckError, export_model

# Exported and original logits agree to float rounding; ONNX Runtime reorders some operations.
ATOL = 1e-4
README_FOLDER = "logs/export/runs/<time>/"  # where the README's recipes read the exported files from


def exported(trained_run: Path, folder: Path, *args: str) -> Path:
    """Run `src/export.py` on the run's best checkpoint into `folder`; return the folder."""
    result = run_entry("export.py", [f"ckpt_path={best_checkpoint(trained_run)}", *args, f"hydra.run.dir={folder}"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return folder


def expected_logits(trained_run: Path, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return checkpoint_net(trained_run)(normalised(images))


def network_description(trained_run: Path) -> tuple[str, dict]:
    """The class and constructor arguments of the run's `model.net`, as the `.json` should record them."""
    net_config = OmegaConf.to_container(run_config(trained_run).model.net, resolve=True)
    return net_config.pop("_target_"), net_config


def readme_recipes() -> list[str]:
    """The Python blocks of the README's section on prediction and export, as a user copies them."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Predict on your own images, export\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def onnx_export(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported(trained_run, tmp_path_factory.mktemp("onnx"), "format=onnx")


@pytest.mark.slow
def test_the_onnx_model_takes_uint8_images_of_any_batch_size(trained_run: Path, onnx_export: Path) -> None:
    session = onnxruntime.InferenceSession(str(onnx_export / "model.onnx"), providers=["CPUExecutionProvider"])
    (given,), (returned,) = session.get_inputs(), session.get_outputs()
    assert (given.name, given.type, returned.name) == ("images", "tensor(uint8)", "logits")
    assert isinstance(given.shape[0], str) and given.shape[1:] == [3, 32, 32], "a dynamic batch axis"
    images = run_test_images(trained_run, 7)
    for batch in (images[:1], images):
        logits = session.run(["logits"], {"images": batch.numpy()})[0]
        assert logits.shape == (len(batch), 100)
        assert torch.from_numpy(logits) == pytest.approx(expected_logits(trained_run, batch), abs=ATOL)


@pytest.mark.slow
def test_the_onnx_models_description_says_what_it_takes(onnx_export: Path, trained_run: Path) -> None:
    description = json.loads((onnx_export / "model.json").read_text())
    assert description["format"] == "onnx" and description["input"] == "uint8" and description["opset"] == 18
    assert description["input_description"].startswith("uint8 Nx3x32x32 (NCHW, RGB, 0-255)")
    assert description["mean"] == pytest.approx(CIFAR100_MEAN) and description["std"] == pytest.approx(CIFAR100_STD)
    assert description["classes"] == [f"class_{i:03d}" for i in range(100)]
    assert (description["net_class"], description["net"]) == network_description(trained_run)
    assert description["ckpt_path"] == str(best_checkpoint(trained_run).resolve())
    assert 0 <= description["max_abs_logit_difference"] <= ATOL


@pytest.mark.slow
def test_the_torchscript_model_gives_the_checkpoints_logits(trained_run: Path, tmp_path: Path) -> None:
    folder = exported(trained_run, tmp_path, "format=torchscript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        model = torch.jit.load(str(folder / "model.torchscript.pt"))
    images = run_test_images(trained_run, 5)
    with torch.no_grad():
        for batch in (images[:1], images):
            assert model(batch) == pytest.approx(expected_logits(trained_run, batch), abs=1e-5)
    assert json.loads((folder / "model.torchscript.json").read_text())["input"] == "uint8"


@pytest.mark.slow
def test_the_state_dict_loads_strictly_into_the_plain_wideresnet(trained_run: Path, tmp_path: Path) -> None:
    folder = exported(trained_run, tmp_path, "format=state_dict")
    weights = torch.load(folder / "model.state_dict.pt", weights_only=True)
    assert not [k for k in weights if k.startswith("net.")] and "fc.weight" in weights
    description = json.loads((folder / "model.state_dict.json").read_text())
    assert description["net_class"] == "wrncifar.models.wideresnet.WideResNet"
    net = WideResNet(**description["net"])
    net.load_state_dict(weights, strict=True)
    images = run_test_images(trained_run, 4)
    with torch.no_grad():
        assert torch.equal(net.eval()(normalised(images)), expected_logits(trained_run, images))
    assert description["input"] == "normalized" and description["input_name"] is None


def test_the_readmes_recipes_load_the_exports_as_written(
    trained_run: Path, make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A researcher's fresh Python session: each block of the README's export section, its `<time>` folder made
    the export's, gives the checkpoint's logits on a 32×32 PNG."""
    folder = tmp_path / "export"
    for fmt in ("onnx", "state_dict"):
        overrides = [f"ckpt_path={best_checkpoint(trained_run)}", f"format={fmt}", f"output={folder}/"]
        export_model(make_config(overrides, "export.yaml"))
    image = run_test_images(trained_run, 1)
    Image.fromarray(image[0].permute(1, 2, 0).numpy()).save(tmp_path / "cat_32x32.png")
    monkeypatch.chdir(tmp_path)
    recipes = readme_recipes()
    assert len(recipes) == 2 and all(README_FOLDER in recipe for recipe in recipes)
    for recipe in recipes:
        namespace: dict = {}
        exec(recipe.replace(README_FOLDER, f"{folder}/"), namespace)
        assert torch.as_tensor(namespace["logits"]) == pytest.approx(expected_logits(trained_run, image), abs=ATOL)


def test_an_output_ending_in_a_slash_is_a_folder_made_for_the_model(
    trained_run: Path, make_config, tmp_path: Path
) -> None:
    """`output=models/` for a folder not made yet: not a file named `models` that the next command overwrites."""
    folder = tmp_path / "new" / "models"
    overrides = [f"ckpt_path={best_checkpoint(trained_run)}", "format=torchscript", f"output={folder}/"]
    description = export_model(make_config(overrides, "export.yaml"))
    assert sorted(p.name for p in folder.iterdir()) == ["model.torchscript.json", "model.torchscript.pt"]
    assert description["file"] == "model.torchscript.pt"


def test_an_export_replaces_an_earlier_export_but_no_other_file(trained_run: Path, make_config, tmp_path: Path) -> None:
    ckpt = tmp_path / "mine" / "last.ckpt"
    ckpt.parent.mkdir()
    shutil.copy(best_checkpoint(trained_run), ckpt)
    base = [f"ckpt_path={best_checkpoint(trained_run)}", "format=torchscript"]
    (ckpt.parent / "notes.json").write_text('{"mine": true}')
    # A checkpoint; a model whose .json (notes.json) would replace a file of the user's.
    for output, refused in [(ckpt, "last.ckpt"), (ckpt.parent / "notes", "notes.json")]:
        message = rf"output: .*{re.escape(refused)} already exists and is not an earlier output"
        with pytest.raises(ConfigError, match=message):
            export_model(make_config([*base, f"output={output}"], "export.yaml"))
    assert ckpt.read_bytes() == best_checkpoint(trained_run).read_bytes()
    assert json.loads((ckpt.parent / "notes.json").read_text()) == {"mine": True}
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt", "notes.json"]
    for _ in range(2):  # the same command again: its own earlier export is replaced
        export_model(make_config([*base, f"output={tmp_path / 'again.pt'}"], "export.yaml"))
    assert json.loads((tmp_path / "again.json").read_text())["file"] == "again.pt"


def test_two_exports_of_one_name_never_share_a_description(trained_run: Path, make_config, tmp_path: Path) -> None:
    """`wrn.ts` and `wrn.pt` would both be described in `wrn.json`: the second export is refused, naming the first,
    which stays described and replaceable by its own command."""
    ckpt = f"ckpt_path={best_checkpoint(trained_run)}"
    first = [ckpt, "format=torchscript", f"output={tmp_path / 'deploy' / 'wrn.ts'}"]
    second = [ckpt, "format=state_dict", f"output={tmp_path / 'deploy' / 'wrn.pt'}"]
    export_model(make_config(first, "export.yaml"))
    message = r"wrn\.json, which describes another export, .*wrn\.ts, .*\(e\.g\. output=.*wrn_state_dict\.pt\)"
    with pytest.raises(ConfigError, match=message):
        export_model(make_config(second, "export.yaml"))
    assert sorted(p.name for p in (tmp_path / "deploy").iterdir()) == ["wrn.json", "wrn.ts"]
    assert json.loads((tmp_path / "deploy" / "wrn.json").read_text())["file"] == "wrn.ts"
    assert export_model(make_config(first, "export.yaml"))["file"] == "wrn.ts"


@pytest.mark.parametrize(
    "text",
    ["[" * 200_000, '{"file": ' + "1" * 5000 + "}"],
    ids=["nested-too-deep-for-the-parser", "integer-too-long-for-python"],
)
def test_a_json_beside_the_output_that_python_cannot_read_is_a_file_of_the_users(
    trained_run: Path, make_config, tmp_path: Path, text: str
) -> None:
    """JSON that Python's parser gives up on (RecursionError, ValueError) is not an earlier description: refused."""
    (tmp_path / "odd.json").write_text(text)
    overrides = [f"ckpt_path={best_checkpoint(trained_run)}", "format=torchscript", f"output={tmp_path / 'odd.pt'}"]
    with pytest.raises(ConfigError, match=r"odd\.json already exists and is not an earlier output"):
        export_model(make_config(overrides, "export.yaml"))
    assert (tmp_path / "odd.json").read_text() == text and not (tmp_path / "odd.pt").exists()


def test_the_json_holds_the_networks_class_and_keyword_arguments_only() -> None:
    """Hydra's call keys are left out; a config that keyword arguments cannot describe stops a state_dict export
    (its weights could not be loaded from the .json), and is recorded as it is beside an onnx model."""
    config = {"_target_": "my.Net", "_convert_": "all", "width": 8, "block": {"_target_": "my.Block", "depth": 2}}
    assert export.constructor({**config, "block": None}, "state_dict") == ("my.Net", {"width": 8, "block": None})
    with pytest.raises(ConfigError, match=r"format=state_dict: model\.net\.block cannot be written as a keyword"):
        export.constructor(config, "state_dict")
    assert export.constructor(config, "onnx")[1]["block"] == config["block"]


@pytest.mark.slow
def test_the_seeds_own_weights_go_back_to_the_seeds_own_code(make_config, tmp_path: Path) -> None:
    from tests.seed_wideresnet import WideResNet as SeedWideResNet

    torch.manual_seed(0)
    seed = SeedWideResNet(100).eval()
    torch.save(seed.state_dict(), tmp_path / "seed.pt")
    overrides = [f"ckpt_path={tmp_path / 'seed.pt'}", "model.net.pooling=seed", "format=state_dict"]
    export_model(make_config([*overrides, f"output={tmp_path / 'back.pt'}"], "export.yaml"))
    again = SeedWideResNet(100).eval()
    again.load_state_dict(torch.load(tmp_path / "back.pt", weights_only=True), strict=True)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(images), seed(images))


def test_an_onnx_model_for_normalised_images(trained_run: Path, make_config, tmp_path: Path) -> None:
    overrides = [f"ckpt_path={best_checkpoint(trained_run)}", "input=normalized", f"output={tmp_path / 'm' / 'f.onnx'}"]
    description = export_model(make_config(overrides, "export.yaml"))
    assert description["input"] == "normalized" and (tmp_path / "m" / "f.json").is_file()
    session = onnxruntime.InferenceSession(str(tmp_path / "m" / "f.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    images = run_test_images(trained_run, 3)
    logits = session.run(["logits"], {"images": normalised(images).numpy()})[0]
    assert torch.from_numpy(logits) == pytest.approx(expected_logits(trained_run, images), abs=ATOL)


def test_an_export_that_does_not_match_the_checkpoint_is_not_written(
    trained_run: Path, make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = export.exported_logits
    monkeypatch.setattr(export, "exported_logits", lambda *args: real(*args) + 0.5)
    cfg = make_config([f"ckpt_path={best_checkpoint(trained_run)}", "format=torchscript"], "export.yaml")
    with pytest.raises(ExportCheckError, match=r"gave logits up to 0\.5 away from the checkpoint's .*not written"):
        export_model(cfg)
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["format=pickle"], r"format: expected one of \['onnx', 'torchscript', 'state_dict'\], got 'pickle'"),
        (["input=float"], r"input: expected one of \['uint8', 'normalized'\], got 'float'"),
        (["opset=13"], "opset=13: torch's ONNX exporter writes opset 18 or later"),
        (["opset=40"], r"opset=40: torch's ONNX exporter writes opsets 18 to \d+ with the installed onnx"),
        (["output=/tmp/model.json"], "the model.s description is written to <name>.json"),
        (["ckpt_path=null"], r"ckpt_path is required \(the checkpoint to load\): python src/export.py"),
    ],
)
def test_bad_settings_are_one_clear_error(
    trained_run: Path, make_config, tmp_path: Path, overrides: list[str], message: str
) -> None:
    cfg = make_config([f"ckpt_path={best_checkpoint(trained_run)}", *overrides], "export.yaml")
    with pytest.raises(ConfigError, match=message):
        export_model(cfg)
    assert not list(tmp_path.glob("*.onnx"))


def test_the_newest_opset_is_the_newest_the_exporter_writes(trained_run: Path, make_config, tmp_path: Path) -> None:
    """One past it is refused before exporting (the exporter fails deep inside onnx_ir, or writes opset 18); the
    newest itself is written as asked."""
    newest = export.newest_opset()
    ckpt = f"ckpt_path={best_checkpoint(trained_run)}"
    with pytest.raises(ConfigError, match=rf"opset={newest + 1}: .*writes opsets 18 to {newest} .*opset<={newest}"):
        export_model(make_config([ckpt, f"opset={newest + 1}"], "export.yaml"))
    description = export_model(make_config([ckpt, f"opset={newest}"], "export.yaml"))
    assert description["opset"] == newest and export.onnx_opset(tmp_path / "model.onnx") == newest


def test_an_onnx_model_at_another_opset_than_asked_is_not_written(
    trained_run: Path, make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past onnx's newest opset the exporter logs a warning and writes opset 18: refused, not a silent downgrade."""
    monkeypatch.setattr(export, "newest_opset", lambda: 40)  # an exporter that claims more than it writes
    cfg = make_config([f"ckpt_path={best_checkpoint(trained_run)}", "opset=40"], "export.yaml")
    with pytest.raises(ExportCheckError, match=r"wrote opset 18, not opset=40, so the model was not written"):
        export_model(cfg)
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.json"))


def test_onnx_without_its_packages_says_what_to_install(
    trained_run: Path, make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    cfg = make_config([f"ckpt_path={best_checkpoint(trained_run)}"], "export.yaml")
    with pytest.raises(ConfigError, match=r"format=onnx needs the onnx and onnxscript packages .*\[export\]"):
        export_model(cfg)


def test_onnx_on_a_torch_without_the_new_exporter_says_what_to_upgrade(
    trained_run: Path, make_config, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """torch 2.4's `torch.onnx.export` has neither `dynamo=True` nor `dynamic_shapes`: a TypeError deep in torch."""
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu124")
    cfg = make_config([f"ckpt_path={best_checkpoint(trained_run)}"], "export.yaml")
    with pytest.raises(ConfigError, match=r"format=onnx needs torch>=2\.6 .*this is torch 2\.5\.1\+cu124"):
        export_model(cfg)
    assert not list(tmp_path.glob("*.onnx"))

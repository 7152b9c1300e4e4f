"""Export a checkpoint's network for deployment: `python src/export.py ckpt_path=… format=onnx|torchscript|state_dict`.

- `onnx`: torch's dynamo-based exporter (`torch.onnx.export(..., dynamo=True)`, which needs `onnx` and `onnxscript`),
  at opset `opset` (18 by default; up to `newest_opset()`, 25 with onnxscript 0.7), one input `images` with a dynamic
  batch axis, one output `logits`.
- `torchscript`: `torch.jit.trace` of the same module; any batch size.
- `state_dict`: the network's own weights with the plain `WideResNet` names (no `net.` prefix), as the seed's code
  saves them: `net.load_state_dict(torch.load(path))` into `get_class(net_class)(**net)`, both from the `.json`.

`input=uint8` (the default) exports `Uint8ImageClassifier`: uint8 images N×3×S×S (NCHW, RGB, 0–255; S = 32 for
CIFAR) in, the normalisation of the checkpoint's data config inside. `input=normalized` takes float32 images already
normalised. Either way it returns the logits N×C. Beside the model, `<name>.json` records the input it takes, the
image size, mean, std, class names and the network: its class (`net_class`) and constructor arguments (`net`, a plain
keyword dict, not Hydra's config, so that a fresh Python session builds it without Hydra's `instantiate`). Each
exported file is loaded back (onnxruntime, `torch.jit.load`, a strict `load_state_dict` into the network the `.json`
describes) and its logits compared with the checkpoint's before the command ends. An existing file at `output` is
replaced only when it is an earlier export (its `.json` beside it says so); so is its `.json`, which is never one
describing another export (`wrn.ts` and `wrn.pt` in one folder would share `wrn.json`: the second is refused).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from hydra.utils import get_class
from omegaconf import DictConfig
from torch import nn
from torch.torch_version import TorchVersion

from wrncifar.analysis.output_files import write_file
from wrncifar.models.uint8_images import Uint8ImageClassifier
from wrncifar.run.checkpoint_network import CheckpointNetwork, load_checkpoint_network, output_file, refuse_to_replace
from wrncifar.run.config_validation import ConfigError

log = logging.getLogger(__name__)

Format = Literal["onnx", "torchscript", "state_dict"]
InputKind = Literal["uint8", "normalized"]
EXPORT_SETTINGS: dict[str, Any] = {
    "format": Format,
    "input": InputKind,
    "output": str | None,
    "opset": int,
}
FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "state_dict": "model.state_dict.pt"}
EXAMPLE = "python src/export.py ckpt_path=<run_dir>/checkpoints/<name>.ckpt format=onnx"
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# The exported model's logits may differ from the checkpoint's by float rounding only: the largest difference
# allowed, relative to the largest logit (ONNX Runtime fuses and reorders operations; 1e-6 is typical).
TOLERANCE = 1e-3
MIN_OPSET = 18  # the oldest the dynamo-based exporter writes (it converts to older ones unreliably)
ONNX_MIN_TORCH = "2.6"  # torch.onnx.export(dynamo=True, dynamic_shapes=…) returning an ONNXProgram
CHECK_BATCH = 5  # not the traced batch (2), so the check also covers the dynamic batch axis
# Hydra's keys in a `model.net` config that say how to call the class, not what to call it with.
HYDRA_CALL_KEYS = ("_target_", "_convert_", "_recursive_")
# Keys every `.json` this module writes has: how an earlier export is told from a file of the user's own.
DESCRIPTION_KEYS = ("file", "format", "ckpt_path", "max_abs_logit_difference")
DESCRIPTION_MAX_BYTES = 1 << 20  # a description is a few kB; a larger .json is not one


class ExportCheckError(RuntimeError):
    """The exported model is not what was asked: its logits differ from the checkpoint's beyond float rounding, or
    it is at another opset than `opset`."""


def export_model(cfg: DictConfig) -> dict[str, Any]:
    """Export the network of `cfg.ckpt_path` as `cfg.format`, check it, and write it with its `.json` description to
    `cfg.output` (a folder gets the default name inside it), else to the run folder. Returns the description."""
    loaded = load_checkpoint_network(cfg, EXPORT_SETTINGS, EXAMPLE)
    fmt: Format = cfg.format
    kind: InputKind = "normalized" if fmt == "state_dict" else cfg.input
    if fmt == "state_dict" and cfg.input == "uint8":
        log.info(
            "format=state_dict holds the network's weights only: it takes normalised images (input= applies to "
            "onnx and torchscript); mean and std are in the .json beside it"
        )
    net_class, net_arguments = constructor(loaded.net_config, fmt)
    out = output_file(cfg.get("output"), Path(cfg.paths.output_dir), FILE_NAMES[fmt], earlier_export)
    if out.suffix == ".json":
        raise ConfigError(f"output={out}: the model's description is written to <name>.json; name the model otherwise")
    json_path = out.with_suffix(".json")
    refuse_other_exports_description(json_path, out, fmt)
    refuse_to_replace(json_path, lambda path: description_file(path) is not None)
    module = Uint8ImageClassifier(loaded.net, loaded.images.mean, loaded.images.std, normalize=kind == "uint8").eval()

    example = example_images(kind, loaded, 2)
    differences: list[float] = []

    def write_checked(tmp: Path) -> None:  # the file appears at `out` only once its logits have been checked
        if fmt == "onnx":
            save_onnx(module, example, tmp, cfg.opset)
        elif fmt == "torchscript":
            save_torchscript(module, example, tmp)
        else:
            torch.save(dict(loaded.net.state_dict()), tmp)
        differences.append(check_export(fmt, tmp, module, kind, loaded, net_class, net_arguments))

    write_file(out, write_checked)
    difference = differences[0]

    opset = onnx_opset(out) if fmt == "onnx" else None
    description = describe(fmt, kind, loaded, (net_class, net_arguments), opset, difference, out)
    write_file(json_path, lambda tmp: tmp.write_text(json.dumps(description, indent=2) + "\n"))
    log.info(
        "Exported %s (%s, input %s) to %s; its logits match the checkpoint's within %.2g; described in %s",
        loaded.ckpt_path.name, fmt, kind, out, difference, json_path,
    )  # fmt: skip
    return description


def constructor(net_config: dict[str, Any], fmt: Format) -> tuple[str, dict[str, Any]]:
    """The class `model.net` names and its keyword arguments, as the `.json` records them. ConfigError for
    `format=state_dict` when the config is more than a class and keyword arguments (positional `_args_`, a nested
    `_target_`): the weights alone would then not say how to build the network they fit."""
    arguments = {key: value for key, value in net_config.items() if key not in HYDRA_CALL_KEYS}
    unwritable = [key for key, value in arguments.items() if key.startswith("_") or nested_target(value)]
    if fmt == "state_dict" and unwritable:
        raise ConfigError(
            f"format=state_dict: model.net.{unwritable[0]} cannot be written as a keyword argument in the .json, so "
            "the weights could not be loaded without this config: export format=onnx or torchscript, which hold the "
            "whole network"
        )
    return str(net_config["_target_"]), arguments


def nested_target(value: Any) -> bool:
    """Whether `value` holds a Hydra config of its own (a `_target_` anywhere inside it)."""
    if isinstance(value, dict):
        return "_target_" in value or any(nested_target(v) for v in value.values())
    return isinstance(value, list) and any(nested_target(v) for v in value)


def refuse_other_exports_description(json_path: Path, out: Path, fmt: Format) -> None:
    """ConfigError when `json_path`, the description `out` would get, describes another export: one with the same
    stem and another suffix (`wrn.ts` beside `wrn.pt`). Replacing it would leave that export undescribed and, its
    `.json` then naming `out`, no longer replaceable by the command that wrote it."""
    description = description_file(json_path)
    if description is None or description["file"] == out.name:
        return
    other = json_path.parent / str(description["file"])
    renamed = out.with_name(f"{out.stem}_{fmt}{out.suffix}")
    raise ConfigError(
        f"output={out}: its description would be {json_path}, which describes another export, {other}, so both "
        f"were left as they are: give this export another name (e.g. output={renamed}), or remove {other.name} and "
        f"{json_path.name} if that export is no longer wanted"
    )


def description_file(path: Path) -> dict[str, Any] | None:
    """The `.json` at `path` when it is one this module wrote (it has `DESCRIPTION_KEYS`), else None."""
    try:
        if path.stat().st_size > DESCRIPTION_MAX_BYTES:
            return None
        description = json.loads(path.read_text())
    # Unreadable, not UTF-8, not JSON (ValueError covers both), or nested too deep for the parser: not one of ours.
    except (OSError, ValueError, RecursionError):
        return None
    return description if isinstance(description, dict) and all(k in description for k in DESCRIPTION_KEYS) else None


def earlier_export(path: Path) -> bool:
    """Whether the file at `path` is a model this module exported: its `.json` beside it describes it."""
    description = description_file(path.with_suffix(".json"))
    return description is not None and description["file"] == path.name


def example_images(kind: InputKind, loaded: CheckpointNetwork, batch: int, seed: int = 0) -> torch.Tensor:
    """Random images of the input the exported model takes: uint8, or those normalised."""
    generator = torch.Generator().manual_seed(seed)
    size = loaded.images.size
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    if kind == "uint8":
        return images
    mean = torch.tensor(loaded.images.mean).view(1, -1, 1, 1)
    std = torch.tensor(loaded.images.std).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean) / std


def check_export(
    fmt: Format,
    path: Path,
    module: nn.Module,
    kind: InputKind,
    loaded: CheckpointNetwork,
    net_class: str,
    net_arguments: dict[str, Any],
) -> float:
    """The largest difference between the logits of the exported file at `path` and those of `module` on a batch
    of random images; ExportCheckError when it is more than float rounding."""
    images = example_images(kind, loaded, CHECK_BATCH, seed=1)
    with torch.inference_mode():
        expected = module(images)
    logits = exported_logits(fmt, path, images, net_class, net_arguments)
    difference = float((logits - expected).abs().max())
    allowed = TOLERANCE * max(1.0, float(expected.abs().max()))
    if difference > allowed:
        raise ExportCheckError(
            f"the exported {fmt} model gave logits up to {difference:.3g} away from the checkpoint's (allowed "
            f"{allowed:.3g}), so it was not written; please report this with your torch and exporter versions"
        )
    return difference


def save_onnx(module: nn.Module, example: torch.Tensor, out: Path, opset: int) -> None:
    """`module` as ONNX at `opset`, with a dynamic batch axis. ConfigError when the exporter's packages are missing
    or `opset` is outside the range it writes; ExportCheckError when it wrote another opset all the same."""
    try:
        import onnx  # the exporter needs both; said here plainly instead of deep inside torch.onnx
        import onnxscript
    except ImportError as err:
        raise ConfigError(
            f"format=onnx needs the onnx and onnxscript packages ({err.name} is missing): pip install -e '.[export]'"
        ) from err
    if TorchVersion(torch.__version__) < ONNX_MIN_TORCH:
        raise ConfigError(
            f"format=onnx needs torch>={ONNX_MIN_TORCH} (its torch.export-based ONNX exporter); this is torch "
            f"{torch.__version__}: pip install -e '.[export]' upgrades it, or export format=torchscript"
        )
    if opset < MIN_OPSET:
        raise ConfigError(
            f"opset={opset}: torch's ONNX exporter writes opset {MIN_OPSET} or later; give opset>={MIN_OPSET}"
        )
    if opset > (newest := newest_opset()):
        raise ConfigError(
            f"opset={opset}: torch's ONNX exporter writes opsets {MIN_OPSET} to {newest} with the installed onnx "
            f"{onnx.__version__} and onnxscript {onnxscript.__version__}; give opset<={newest}, or upgrade both for "
            "a newer one"
        )
    for name in ("onnxscript", "onnx_ir"):  # a line per optimisation pass otherwise, none a user can act on
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
            verbose=False,
        )
    program.save(out)
    if (written := onnx_opset(out)) != opset:
        raise ExportCheckError(
            f"torch's ONNX exporter wrote opset {written}, not opset={opset}, so the model was not written: give "
            f"opset={written}, or report this with your torch, onnx and onnxscript versions"
        )


def newest_opset() -> int:
    """The newest opset torch's exporter writes here. It builds the model at opset 18 and converts it with
    onnxscript's version converter; beyond that converter's range it falls back to onnx's, which (onnx 1.23,
    onnxscript 0.7) either fails deep inside onnx_ir or, past onnx's own newest opset, leaves the model at 18."""
    import onnx

    try:  # a private name: without it, onnx's newest opset, and `save_onnx`'s check of the opset written
        import onnxscript.version_converter._version_converter as converter

        converter_newest = int(converter.SUPPORTED_MAX_ONNX_OPSET)
    except (ImportError, AttributeError):
        converter_newest = onnx.defs.onnx_opset_version()
    return min(converter_newest, onnx.defs.onnx_opset_version())


def onnx_opset(path: Path) -> int:
    """The opset of the default domain the ONNX file at `path` uses."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def save_torchscript(module: nn.Module, example: torch.Tensor, out: Path) -> None:
    """`module` traced to TorchScript (the networks have no data-dependent control flow, so a trace is exact)."""
    with warnings.catch_warnings():
        # torch marks TorchScript deprecated in favour of torch.export; it still loads everywhere libtorch runs.
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        traced = torch.jit.trace(module, example)
    traced.save(str(out))


def exported_logits(
    fmt: Format, path: Path, images: torch.Tensor, net_class: str, net_arguments: dict[str, Any]
) -> torch.Tensor:
    """The logits of the exported file at `path` on `images`, loaded the way a user would load it (a state_dict
    into the network the `.json` describes, as the README's recipe builds it)."""
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError as err:
            raise ConfigError(
                "format=onnx checks the exported model with onnxruntime, which is not installed: "
                "pip install -e '.[export]'"
            ) from err
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0])
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
            loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.inference_mode():
            return loaded(images)
    net = get_class(net_class)(**net_arguments)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    with torch.inference_mode():
        return net.eval()(images)


def describe(
    fmt: Format,
    kind: InputKind,
    loaded: CheckpointNetwork,
    net: tuple[str, dict[str, Any]],
    opset: int | None,
    difference: float,
    out: Path,
) -> dict[str, Any]:
    """The `.json` beside the exported model: what it takes and returns, and where it came from."""
    size = loaded.images.size
    shape = f"Nx3x{size}x{size}"
    return {
        "file": out.name,
        "format": fmt,
        "input": kind,
        "input_name": INPUT_NAME if fmt != "state_dict" else None,
        "input_description": (
            f"uint8 {shape} (NCHW, RGB, 0-255), normalised inside the model"
            if kind == "uint8"
            else f"float32 {shape} (NCHW, RGB), normalised: (pixels / 255 - mean) / std per channel"
        ),
        "output_name": OUTPUT_NAME if fmt != "state_dict" else None,
        "output_description": f"float32 logits Nx{len(loaded.classes)}; softmax for probabilities",
        "image_size": size,
        "mean": list(loaded.images.mean),
        "std": list(loaded.images.std),
        "classes": list(loaded.classes),
        "net_class": net[0],
        "net": net[1],
        "ckpt_path": str(loaded.ckpt_path),
        "torch": torch.__version__,
        "opset": opset,
        "max_abs_logit_difference": difference,
    }

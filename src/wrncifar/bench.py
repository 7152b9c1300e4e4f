"""Training throughput of the WideResNet: naive vs on-device data, plain loop vs Lightning, fp32/bf16, eager/compiled.

    python -m wrncifar.bench                    # seed model, batch 512, on the GPU if there is one
    python -m wrncifar.bench --json bench.json  # also write every number as JSON

Cases (all in one process, on the same synthetic CIFAR-shaped data, timed after warm-up between device syncs):
  plain/naive      a plain PyTorch loop fed by a DataLoader with PIL transforms (what torchvision's CIFAR100
                   does), NCHW, eager: the baseline (a)
  plain/loader     the same loop fed by the project's datamodule with `on_device=False` (its DataLoader and
                   transforms: the pipeline of `data.policy` runs), NCHW, eager
  lightning/loader `Trainer.fit` of the project's `ImageClassifier` on that datamodule
  plain/device     the plain loop fed by `DeviceBatches` (data on the device), channels_last
  lightning/device `Trainer.fit` of the project's `ImageClassifier` on the project's datamodule with
                   `on_device=True`, channels_last: a GPU run's default (on a CPU: the default data path, NCHW)
each at fp32 and bf16 autocast, eager and (for the on-device cases) torch.compile; a Lightning case is compared
with the plain loop on the same pipeline, precision and compilation (b). Named with `--cases`, the
compilation variants run too, on the on-device path: `compiled-blocks` (regional compilation, each residual
block on its own), `max-autotune` (Inductor's autotuned kernels, no CUDA graphs) and `cudagraphs`
(`reduce-overhead`: CUDA graphs). Each compiled case starts from an empty compilation cache, so its `warmup_s`
(the untimed first steps) is what a first run's compilation costs. A case that fails (a compilation mode this
machine cannot run, say) is listed with its error, and the cases after it still run; the command then exits
with 1. The data pipeline alone is timed too:
augmented images/s of `DeviceBatches`, and of one DataLoader worker's PIL transforms. So is a checkpoint of the
network with its SGD state: how long one save holds training up when written in the foreground, and in the
background (the copy to host memory alone), and how long the background write then takes.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as v1

from wrncifar.data.arrays import ImageArrays
from wrncifar.data.cifar100 import CIFAR100DataModule
from wrncifar.data.transforms import CIFAR100_MEAN, CIFAR100_STD
from wrncifar.models.classifier import ImageClassifier
from wrncifar.models.compilation import compile_in_place
from wrncifar.models.flops import flops_per_image, peak_flops
from wrncifar.models.optimization import OptimizerSettings, ScheduleSettings, build_optimizer, build_scheduler
from wrncifar.models.wideresnet import WideResNet
from wrncifar.run.checkpoints import AtomicCheckpointIO
from wrncifar.run.console import quiet_console

PRECISIONS = {"fp32": ("32-true", None), "bf16": ("bf16-mixed", torch.bfloat16)}
# How a case runs the network: None (eager), or torch.compile's scope and mode.
COMPILATIONS: dict[str, tuple[str, str | None] | None] = {
    "eager": None,
    "compiled": ("network", None),
    "compiled-blocks": ("blocks", None),
    "max-autotune": ("network", "max-autotune-no-cudagraphs"),
    "cudagraphs": ("network", "reduce-overhead"),
}
STANDARD_COMPILATIONS = ("eager", "compiled")


@dataclass(frozen=True)
class Case:
    loop: str  # plain | lightning
    pipeline: str  # naive | loader | device
    precision: str  # fp32 | bf16
    compilation: str = "eager"  # a key of COMPILATIONS

    @property
    def name(self) -> str:
        return f"{self.loop}/{self.pipeline}/{self.precision}/{self.compilation}"

    @property
    def compiled(self) -> bool:
        return COMPILATIONS[self.compilation] is not None

    @property
    def compile_scope(self) -> str:
        return self._compile_setting[0]

    @property
    def compile_mode(self) -> str | None:
        return self._compile_setting[1]

    @property
    def _compile_setting(self) -> tuple[str, str | None]:
        return COMPILATIONS[self.compilation] or ("network", None)


@dataclass
class Result:
    case: str
    images_per_sec: float
    ms_per_step: float
    warmup_s: float  # the untimed first steps: with torch.compile, mostly compilation (from an empty cache)
    peak_memory_mib: float | None
    tflops_per_sec: float
    mfu: float | None
    vs_naive: float | None = None  # ÷ plain/naive/fp32/eager (a)
    vs_plain_device: float | None = None  # ÷ the plain loop on the same pipeline, precision and compilation (b)
    host_syncs: int | None = None  # implicit host–device syncs in the timed Lightning steps (CUDA only)


@dataclass
class Failure:
    case: str
    error: str  # the exception's type and first line; its traceback went to the console


@dataclass
class Report:
    device: str
    torch: str
    batch_size: int
    widths: list[int]
    train_flops_per_image: float
    results: list[Result] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    pipeline_images_per_sec: dict[str, float] = field(default_factory=dict)
    checkpoint_s: dict[str, float] = field(default_factory=dict)
    profile: str = ""


def all_cases(variants: bool = True) -> list[Case]:
    """The standard cases, and with `variants` the other compilations of the on-device path."""
    cases = [Case("plain", "naive", p) for p in PRECISIONS]
    cases += [Case(loop, "loader", p) for loop in ("plain", "lightning") for p in PRECISIONS]
    for loop in ("plain", "lightning"):
        cases += [Case(loop, "device", p, c) for c in STANDARD_COMPILATIONS for p in PRECISIONS]
    if variants:
        extra = [c for c in COMPILATIONS if c not in STANDARD_COMPILATIONS]
        cases += [Case(loop, "device", p, c) for loop in ("plain", "lightning") for c in extra for p in PRECISIONS]
    return cases


def selected_cases(patterns: list[str] | None) -> list[Case]:
    """Without patterns the standard cases; else, pattern by pattern, the case of that exact name or every case whose
    name contains it (each case once, in the order the patterns give)."""
    if not patterns:
        return all_cases(variants=False)
    chosen: list[Case] = []
    for pattern in patterns:
        exact = [c for c in all_cases() if c.name == pattern]
        chosen += [c for c in exact or [c for c in all_cases() if pattern in c.name] if c not in chosen]
    return chosen


class ArraysDataModule(CIFAR100DataModule):
    """The project's datamodule over given arrays (the benchmark's synthetic images)."""

    def __init__(self, arrays: ImageArrays, **kwargs: object) -> None:
        super().__init__(download=False, **kwargs)
        self.arrays = arrays

    def prepare_data(self) -> None:
        """In memory already."""

    def load_arrays(self) -> ImageArrays:
        return self.arrays


def random_arrays(train_images: int, num_classes: int = 100, seed: int = 0) -> ImageArrays:
    """Uniform random uint8 images (throughput does not depend on what the pixels show): `train_images` for
    training plus one per class that the datamodule's split holds out for validation."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(num_classes), np.arange(train_images) % num_classes])
    images = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    test = rng.integers(0, 256, size=(num_classes, 32, 32, 3), dtype=np.uint8)
    classes = tuple(f"class_{i}" for i in range(num_classes))
    return ImageArrays(images, labels, test, np.arange(num_classes), classes)


class PILImages(Dataset):
    """What torchvision's CIFAR100 dataset does per sample: an HWC array → PIL image → v1 transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels
        self.transform = v1.Compose(
            [
                v1.RandomCrop(32, padding=4),
                v1.RandomHorizontalFlip(),
                v1.ToTensor(),
                v1.Normalize(CIFAR100_MEAN, CIFAR100_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def forever(batches: Iterable) -> Iterator:
    while True:
        yield from batches


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(
    net: nn.Module,
    batches: Iterable,
    device: torch.device,
    case: Case,
    warmup: int,
    steps: int,
    after_step: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """Seconds of the `warmup` steps and of the `steps` SGD steps after them: forward, loss, backward, step, LR
    schedule."""
    optimizer = build_optimizer(net, OptimizerSettings())
    scheduler = build_scheduler(optimizer, ScheduleSettings(), warmup + steps, steps_per_epoch=100)
    criterion = nn.CrossEntropyLoss()
    dtype = PRECISIONS[case.precision][1]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    memory_format = torch.channels_last if case.pipeline == "device" else torch.contiguous_format
    batch_iter = forever(batches)
    began = start = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        images, labels = next(batch_iter)
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with autocast:
            loss = criterion(net(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if after_step:
            after_step()
    synchronize(device)
    return start - began, time.perf_counter() - start


class Stopwatch(Callback):
    """Times the training steps after `warmup`, between device syncs."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.began = 0.0
        self.start = 0.0
        self.seconds = 0.0
        self.steps = 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.began = time.perf_counter()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: object, idx: int) -> None:
        if trainer.global_step == self.warmup:
            synchronize(pl_module.device)
            self.start = time.perf_counter()
            if pl_module.device.type == "cuda":  # from here on, every implicit host–device sync warns
                torch.cuda.set_sync_debug_mode("warn")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
        synchronize(pl_module.device)
        self.seconds = time.perf_counter() - self.start
        self.steps = trainer.global_step - self.warmup


def lightning_fit(
    net: nn.Module, datamodule: CIFAR100DataModule, device: torch.device, case: Case, warmup: int, steps: int
) -> tuple[float, float, int | None]:
    """Seconds of `Trainer.fit`'s `warmup` steps and of the `steps` after them, and the implicit host–device syncs
    in those."""
    model = ImageClassifier(
        net,
        channels_last=case.pipeline == "device",
        compile=case.compiled,
        compile_scope=case.compile_scope,
        compile_mode=case.compile_mode,
    )
    stopwatch = Stopwatch(warmup)
    trainer = Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=PRECISIONS[case.precision][0],
        max_steps=warmup + steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[stopwatch],
    )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(model, datamodule=datamodule)
    finally:
        if device.type == "cuda":  # a fit that failed in its timed steps left it on (`Stopwatch.on_train_end`)
            torch.cuda.set_sync_debug_mode("default")
        # The datamodule is shared by the cases after this one: it lets go of this run's on-device training images
        # (about 130 MiB of CIFAR-100 on the GPU), which would count in their peak memory.
        datamodule.train_batches, datamodule.trainer = None, None
    syncs = [w for w in caught if "synchronizing" in str(w.message)]
    for w in syncs[:3]:
        print(f"host-device sync in a timed Lightning step: {w.filename}:{w.lineno}: {w.message}")
    if stopwatch.steps != steps:
        raise RuntimeError(f"Lightning ran {stopwatch.steps} timed steps, expected {steps}")
    warmup_s = stopwatch.start - stopwatch.began
    return warmup_s, stopwatch.seconds, len(syncs) if device.type == "cuda" else None


def time_case(
    case: Case,
    args: argparse.Namespace,
    datamodule: CIFAR100DataModule,
    device: torch.device,
    after_step: Callable[[], None] | None = None,
) -> tuple[float, float, int | None]:
    """Seconds of the warm-up and of the timed steps of `case`, and the host–device syncs of Lightning's steps."""
    torch.manual_seed(0)
    net = WideResNet(num_classes=100, widths=args.widths, blocks_per_stage=args.blocks_per_stage).to(device)
    if case.pipeline == "loader":
        datamodule = loader_datamodule(datamodule, args.workers)
    if case.loop == "lightning":
        return lightning_fit(net, datamodule, device, case, args.warmup, args.steps)
    if case.pipeline == "loader":
        batches: Iterable = datamodule.train_dataloader()
    elif case.pipeline == "device":
        net = net.to(memory_format=torch.channels_last)
        batches = datamodule.device_batches(datamodule.train_set, args.batch_size, True, device)
    else:
        train = datamodule.train_set
        batches = DataLoader(
            PILImages(train.images.permute(0, 2, 3, 1).numpy(), train.labels.numpy()),
            batch_size=args.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=args.workers > 0,
        )
    if case.compiled:
        compile_in_place(net, case.compile_scope, case.compile_mode)
    return (*plain_loop(net, batches, device, case, args.warmup, args.steps, after_step), None)


def loader_datamodule(datamodule: ArraysDataModule, workers: int) -> ArraysDataModule:
    """`datamodule`'s images through the project's CPU loader path (`on_device=False`, `workers` processes)."""
    loader = ArraysDataModule(
        datamodule.arrays,
        batch_size=datamodule.batch_size,
        drop_last=True,
        on_device=False,
        num_workers=workers,
        val_per_class=1,
    )
    loader.setup("fit")
    return loader


def pipeline_rates(datamodule: CIFAR100DataModule, device: torch.device, batch_size: int) -> dict[str, float]:
    """Augmented images/s of the data pipelines alone."""
    batches = datamodule.device_batches(datamodule.train_set, batch_size, True, device)
    for _ in zip(range(2), batches, strict=False):  # warm-up
        pass
    synchronize(device)
    start = time.perf_counter()
    count = sum(len(labels) for _, labels in batches)
    synchronize(device)
    rates = {f"on-device ({device.type})": count / (time.perf_counter() - start)}
    train = datamodule.train_set
    pil = PILImages(train.images[:2000].permute(0, 2, 3, 1).numpy(), train.labels[:2000].numpy())
    start = time.perf_counter()
    for i in range(len(pil)):
        pil[i]
    rates["PIL per DataLoader worker (cpu)"] = len(pil) / (time.perf_counter() - start)
    return rates


def checkpoint_stall(net: nn.Module, device: torch.device, repeats: int = 3) -> dict[str, float]:
    """Seconds one checkpoint save of `net` and its SGD state (momentum buffers) holds training up, written as
    runs write them (`AtomicCheckpointIO`, to a temporary folder): in the foreground, and in the background
    (`save_checkpoint` returns after the copy to host memory), with the background write's own seconds. As in a
    run, one background writer makes every save: its first (`background_first_s`) copies into fresh host memory,
    the others into the memory of the snapshot written before. Each the median of `repeats` saves (of the saves
    after the first, for the background); `size_mib` the file's size."""
    net = copy.deepcopy(net).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.zeros(2, 3, 32, 32, device=device)).sum().backward()
    optimizer.step()
    state = {"state_dict": net.state_dict(), "optimizer_states": [optimizer.state_dict()], "global_step": 1}
    times: dict[str, list[float]] = {"foreground_s": [], "background_s": [], "write_s": []}
    background = AtomicCheckpointIO(background=True)
    with tempfile.TemporaryDirectory(prefix="wrncifar-bench-") as folder:
        path = Path(folder) / "last.ckpt"
        for repeat in range(repeats + 1):
            for io in (AtomicCheckpointIO(background=False), background):
                synchronize(device)
                start = time.perf_counter()
                io.save_checkpoint(state, path)
                returned = time.perf_counter()
                io.wait()
                if io is background:
                    times["background_s"].append(returned - start)
                    times["write_s"].append(time.perf_counter() - returned)
                elif repeat:
                    times["foreground_s"].append(returned - start)
        background.teardown()
        size_mib = path.stat().st_size / 2**20
    del net, optimizer, state
    first_s = times["background_s"].pop(0)
    times["write_s"].pop(0)
    return {
        "size_mib": size_mib,
        "background_first_s": first_s,
        **{name: statistics.median(values) for name, values in times.items()},
    }


def top_kernels(case: Case, args: argparse.Namespace, datamodule: CIFAR100DataModule, device: torch.device) -> str:
    """Where a plain-loop case spends its device time: the kernels of `args.steps` steps after warm-up."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    torch._dynamo.reset()
    with profile(activities=activities, schedule=schedule(wait=args.warmup, warmup=1, active=args.steps)) as prof:
        time_case(case, replace_args(args, warmup=args.warmup + 1), datamodule, device, after_step=prof.step)
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    # On a GPU the device kernels alone (operators would count their kernels' time twice); on a CPU the operators.
    kernels = [e for e in events if e.device_type == DeviceType.CUDA] or events
    kernels.sort(key=lambda e: e.self_device_time_total or e.self_cpu_time_total, reverse=True)
    total = sum(e.self_device_time_total or e.self_cpu_time_total for e in kernels)
    lines = [
        f"Top kernels of {case.name} ({args.steps} steps)",
        "",
        "| share | calls | kernel |",
        "| ---: | ---: | --- |",
    ]
    for e in kernels[:15]:
        share = (e.self_device_time_total or e.self_cpu_time_total) / total
        lines.append(f"| {share:.1%} | {e.count} | `{e.key[:90]}` |")
    return "\n".join(lines)


def replace_args(args: argparse.Namespace, **changes: object) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


def run(args: argparse.Namespace, progress: Callable[[str], None] = print) -> Report:
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls, as the project's runs set it
    datamodule = ArraysDataModule(
        random_arrays(args.train_images),
        batch_size=args.batch_size,
        drop_last=True,
        on_device=True,
        num_workers=0,
        val_per_class=1,
    )
    datamodule.setup("fit")
    net = WideResNet(num_classes=100, widths=args.widths, blocks_per_stage=args.blocks_per_stage)
    report = Report(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch=torch.__version__,
        batch_size=args.batch_size,
        widths=list(args.widths),
        train_flops_per_image=flops_per_image(net, train=True),
    )
    report.pipeline_images_per_sec = pipeline_rates(datamodule, device, args.batch_size)
    report.checkpoint_s = checkpoint_stall(net, device)
    progress(
        f"checkpoint of {report.checkpoint_s['size_mib']:,.0f} MiB: training waits "
        f"{report.checkpoint_s['foreground_s']:.2f} s (foreground), {report.checkpoint_s['background_s']:.2f} s "
        f"(background; {report.checkpoint_s['background_first_s']:.2f} s its first save)"
    )
    for case in selected_cases(args.cases):
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        torch._dynamo.reset()
        try:
            with empty_compile_cache():
                warmup_s, seconds, syncs = time_case(case, args, datamodule, device)
        except Exception as err:  # noqa: BLE001 - one case failing (CUDA graphs, say) costs the bench that case alone
            traceback.print_exc()
            report.failures.append(Failure(case.name, error_text(err)))
            progress(f"{case.name}: failed: {report.failures[-1].error}")
            if args.json:
                write_json(report, args.json)
            continue
        images_per_sec = args.steps * args.batch_size / seconds
        tflops = images_per_sec * report.train_flops_per_image / 1e12
        peak = peak_flops(device, PRECISIONS[case.precision][1] or torch.float32)
        report.results.append(
            Result(
                case=case.name,
                images_per_sec=images_per_sec,
                ms_per_step=1000 * seconds / args.steps,
                warmup_s=warmup_s,
                peak_memory_mib=torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
                tflops_per_sec=tflops,
                mfu=tflops * 1e12 / peak if peak else None,
                host_syncs=syncs,
            )
        )
        progress(f"{case.name}: {images_per_sec:,.0f} images/s (warm-up {warmup_s:.1f} s)")
        if args.json:  # after each case: a run stopped at a time limit keeps what it measured
            write_json(report, args.json)
    add_ratios(report.results)
    if args.profile:
        report.profile = top_kernels(case_named(args.profile), args, datamodule, device)
    return report


def error_text(err: Exception) -> str:
    """The exception's type and the first line of its message, short enough for a table's cell."""
    first = next(iter(str(err).strip().splitlines()), "")
    return f"{type(err).__name__}: {first}"[:300]


@contextmanager
def empty_compile_cache() -> Iterator[None]:
    """torch.compile's caches emptied for the duration, on disk (a new folder for Inductor and Triton) and in
    memory (the compiled kernels and generated code this process holds, which `torch._dynamo.reset()` keeps):
    each case compiles as a first run would."""
    from torch._inductor.utils import fresh_inductor_cache  # torch 2.4 to 2.14 (2.8 added `fresh_cache`)

    with fresh_inductor_cache():
        yield


def write_json(report: Report, path: Path) -> None:
    """Whole or not at all: a bench stopped at a time limit while writing leaves the previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(asdict(report), indent=2) + "\n")
    os.replace(partial, path)


def case_named(name: str) -> Case:
    for case in all_cases():
        if case.name == name and case.loop == "plain":
            return case
    raise ValueError(f"--profile takes a plain-loop case name like plain/device/bf16/compiled, got {name!r}")


def add_ratios(results: list[Result]) -> None:
    by_name = {r.case: r for r in results}
    naive = by_name.get("plain/naive/fp32/eager")
    for r in results:
        if naive:
            r.vs_naive = r.images_per_sec / naive.images_per_sec
        plain = by_name.get(r.case.replace("lightning/", "plain/"))
        if "/naive/" not in r.case and plain:
            r.vs_plain_device = r.images_per_sec / plain.images_per_sec


def markdown(report: Report) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "–" if value is None else format(value, fmt)

    lines = [
        f"Device: {report.device}; torch {report.torch}; batch {report.batch_size}; widths {report.widths}; "
        f"{report.train_flops_per_image / 1e9:.2f} GFLOP per training image",
        "",
        "| case | images/s | ms/step | warm-up (s) | peak memory (MiB) | TFLOP/s | MFU | × (a) naive | × (b) plain "
        "| syncs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report.results:
        lines.append(
            f"| {r.case} | {r.images_per_sec:,.0f} | {r.ms_per_step:.1f} | {r.warmup_s:.1f} | "
            f"{num(r.peak_memory_mib, ',.0f')} | "
            f"{r.tflops_per_sec:.3g} | {num(r.mfu, '.1%')} | {num(r.vs_naive, '.2f')} | "
            f"{num(r.vs_plain_device, '.3f')} | {num(r.host_syncs, 'd')} |"
        )
    if report.failures:
        lines += ["", "| case that failed | error |", "| --- | --- |"]
        lines += [f"| {f.case} | {f.error.replace('|', '/')} |" for f in report.failures]
    lines += ["", "| data pipeline alone | augmented images/s |", "| --- | ---: |"]
    lines += [f"| {name} | {rate:,.0f} |" for name, rate in report.pipeline_images_per_sec.items()]
    if report.checkpoint_s:
        ckpt = report.checkpoint_s
        lines += [
            "",
            f"| checkpoint ({ckpt['size_mib']:,.0f} MiB, network + SGD state) | training waits (s) |",
            "| --- | ---: |",
            f"| written in the foreground | {ckpt['foreground_s']:.3f} |",
            f"| written in the background, the run's first save (the copy to fresh host memory) "
            f"| {ckpt['background_first_s']:.3f} |",
            f"| written in the background, every later save (the copy into the last snapshot's memory) "
            f"| {ckpt['background_s']:.3f} |",
            f"| … the background write itself | {ckpt['write_s']:.3f} |",
        ]
    if report.profile:
        lines += ["", report.profile]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wrncifar.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cuda, cuda:1, cpu")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (compilation happens here)")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers of the naive pipeline")
    parser.add_argument("--train-images", type=int, default=45_000, help="CIFAR-100's training split by default")
    parser.add_argument("--widths", type=int, nargs=4, default=[16, 160, 320, 640], help="the seed's by default")
    parser.add_argument("--blocks-per-stage", type=int, default=2)
    parser.add_argument(
        "--cases",
        nargs="+",
        help="run these cases (a full name selects that case, a part of one every case containing it), in this "
        "order (default: the standard cases; the compilation variants compiled-blocks, max-autotune and "
        "cudagraphs run only when named)",
    )
    parser.add_argument("--profile", metavar="CASE", help="also list the top kernels of this plain-loop case")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if args.profile:
        try:
            case_named(args.profile)
        except ValueError as err:
            parser.error(str(err))
    if min(args.batch_size, args.steps) < 1 or min(args.warmup, args.workers) < 0:
        parser.error("--batch-size and --steps must be positive; --warmup and --workers >= 0")
    if args.train_images < max(args.batch_size, 100):
        parser.error("--train-images must be at least 100 (one per class) and at least --batch-size")
    return args


def main(argv: list[str] | None = None) -> int:
    """0, or 1 when a case failed (its error is in the report)."""
    args = parse_args(argv)
    quiet_console()  # the Lightning cases would print its cloud tips
    report = run(args)
    print(markdown(report))
    if args.json:
        write_json(report, args.json)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())

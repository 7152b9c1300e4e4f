"""The project's one GPU measurement command: `make gpu-report DATA_DIR=<CIFAR-100 arrays>`.

Within a time budget (9 minutes by default) it runs, in this order:

1. `python -m wrncifar.bench` on the fast path (bf16, on-device data), in this order: the plain loop eager and
   compiled whole, Lightning compiled, the plain loop compiled block by block and with CUDA graphs; each compiled
   case from an empty compilation cache, so its warm-up is a first run's compilation (at most BENCH_SHARE of the
   budget; a case that fails is listed with its error, and the next one runs);
2. `python src/train.py experiment=wrn_cifar100_fast` to the end on the real CIFAR-100 arrays, compiling into an
   empty `paths.compile_cache_dir` (a cold start);
3. the same command for one epoch with that cache (a warm start: the time to the first step);
4. as much of `experiment=wrn_cifar100` (the 200-epoch paper recipe, default speed settings) as the remaining
   budget allows (`trainer.max_time`), then its test; eager, as `model.compile=auto` does not compile a run
   limited to minutes (its compilation would take most of them).

`<out>` gets four files, so that a command stopped at its time limit keeps what was done: `console.log`, every
step's console one after the other, written as the steps print (a step killed mid-way keeps its lines); and,
rewritten after each step, `report.md`, a Markdown table (device, torch/CUDA versions, command, images/s, peak
GPU memory, wall time, time to the first training step, compiled graphs and how many came from the cache, test
top-1/top-5) with the bench's cases below it; `bench.json`, the bench's own report (rewritten after each case);
and `runs.tar.gz`, each step's run folder (metrics.csv, configs) without its checkpoints. The runs themselves
live in a temporary folder, removed at the end: a recipe's checkpoints are gigabytes, and a lent GPU machine
returns few (at most 8), small files. `--dry-run` runs the same steps on the CPU with the tiny model and
synthetic data in a few minutes (the test suite does), so the command works the first time it meets a GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
# In this order: what the defaults run first, then the alternatives to them.
# Eager first: no compilation, so a baseline in seconds even if the compiled cases run out of time. Then
# compiled-blocks, which the report exists to measure beside `compiled`, before the CUDA graphs: those are last, the
# first cut by the bench's share of the budget.
BENCH_CASES = [
    "plain/device/bf16/eager",
    "plain/device/bf16/compiled",
    "lightning/device/bf16/compiled",
    "plain/device/bf16/compiled-blocks",
    "plain/device/bf16/cudagraphs",
]
# The case whose peak memory the table shows: the default fast path at the bench's batch size.
FAST_PATH_CASE = "plain/device/bf16/compiled"
# The bench stops at this share of the budget (its JSON keeps the cases done): the recipes come next. Of 540 s,
# 189 s; the fast recipe takes 150-170 s of the rest, which leaves the paper recipe well over PAPER_MIN_S.
BENCH_SHARE = 0.35
# Small and CPU-sized: the same steps in a minute or two.
DRY_BENCH = [
    "--device",
    "cpu",
    "--widths",
    "4",
    "8",
    "8",
    "8",
    "--blocks-per-stage",
    "1",
    "--batch-size",
    "16",
    "--steps",
    "2",
    "--warmup",
    "1",
    "--train-images",
    "200",
    "--cases",
    "plain/device/fp32/eager",
    "plain/device/fp32/compiled",
]
DRY_FAST_PATH_CASE = "plain/device/fp32/compiled"
DRY_TRAIN = [
    "model=wrn_tiny",
    "data=synthetic",
    "data.train_per_class=4",
    "data.val_per_class=2",
    "data.test_per_class=1",
    "trainer=cpu",
    "trainer.precision=32-true",
    "trainer.max_epochs=1",
    "data.on_device=false",
    "data.drop_last=false",
    "data.batch_size=32",
    "model.channels_last=false",
]
# The recipes' compiled steps at the smallest width, so the dry run's cold and warm starts take seconds.
DRY_COMPILE = ["model.compile=true", "model.net.widths=[4,8,8,8]", "model.net.blocks_per_stage=1"]
# What the paper recipe's limit leaves for the rest of its command: Lightning's max_time counts training only, so
# start-up (imports, CUDA, data, sanity validation), the last validation, the test and the outputs come on top.
TEST_RESERVE_S = 60
# Less than this left for the paper recipe: start-up and compilation alone would take it, so it is skipped.
PAPER_MIN_S = 90
FIRST_STEP = re.compile(r"First training step done ([\d.]+) s after the (?:process|job) started(.*)")
COMPILED = re.compile(r"\(torch\.compile: (\d+) graphs, (\d+) from the cache")


@dataclass
class Step:
    name: str
    command: list[str]
    wall_s: float = 0.0
    returncode: int | None = None
    status: str = ""  # "stopped" (at the budget's end), "skipped" (no time left); else the exit code shows
    images_per_sec: float | None = None
    first_step_s: float | None = None
    start_up: str = ""  # where the time to the first step went, as the run logged it
    compiled_graphs: int | None = None
    cached_graphs: int | None = None
    peak_memory_gib: float | None = None  # the largest per-epoch peak of allocated GPU memory (or the bench's)
    test_top1: float | None = None
    test_top5: float | None = None
    bench_cases: list[dict] | None = None  # the bench's results, as its JSON has them
    bench_failures: list[dict] | None = None  # the bench's cases that failed, with their errors
    unreadable: str = ""  # an output that could not be read back (a step killed while writing it)


def run_step(step: Step, folder: Path, console: Path, timeout_s: float, bench_json: Path | None = None) -> Step:
    """Run `step.command` from the checkout in its run folder `folder`, its console appended to `console` under a
    `== <name>: <command>` line as it prints; read back its numbers."""
    folder.mkdir(parents=True, exist_ok=True)
    # Unbuffered, and straight into the output folder: a step killed at its time limit, or the whole report killed
    # with it at the device call's, keeps every line it printed.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with console.open("ab") as log:
        log.write(f"== {step.name}: {' '.join(step.command)}\n".encode())
        log.flush()
        begin = log.tell()
        start = time.monotonic()
        try:
            done = subprocess.run(
                step.command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=max(timeout_s, 1)
            )
            step.returncode = done.returncode
        except subprocess.TimeoutExpired:
            step.returncode, step.status = None, "stopped"
    step.wall_s = time.monotonic() - start
    with console.open("rb") as log:  # this step's lines alone
        log.seek(begin)
        text = log.read().decode(errors="replace")
    if match := FIRST_STEP.search(text):
        step.first_step_s = float(match.group(1))
        step.start_up = match.group(2).lstrip(": ")
        if compiled := COMPILED.search(match.group(2)):
            step.compiled_graphs, step.cached_graphs = int(compiled.group(1)), int(compiled.group(2))
    try:
        if (metrics := folder / "csv" / "metrics.csv").is_file():
            _read_metrics(step, metrics)
        if bench_json is not None and bench_json.is_file():
            _read_bench(step, json.loads(bench_json.read_text()))
    except (OSError, ValueError, KeyError) as err:
        step.unreadable = f"{type(err).__name__}: {err}"
    return step


def _read_metrics(step: Step, path: Path) -> None:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    rates = [float(r["train/images_per_sec"]) for r in rows if r.get("train/images_per_sec")]
    step.images_per_sec = statistics.median(rates) if rates else None
    peaks = [float(r["gpu/max_memory_allocated_gib"]) for r in rows if r.get("gpu/max_memory_allocated_gib")]
    step.peak_memory_gib = max(peaks) if peaks else None
    tests = [r for r in rows if r.get("test/acc")]
    if tests:
        step.test_top1 = float(tests[-1]["test/acc"])
        step.test_top5 = float(tests[-1]["test/acc_top5"]) if tests[-1].get("test/acc_top5") else None


def _read_bench(step: Step, bench: dict) -> None:
    cases = step.bench_cases = bench["results"]
    step.bench_failures = bench["failures"]
    step.images_per_sec = max((r["images_per_sec"] for r in cases), default=None)
    fast_path = [r for r in cases if r["case"] in (FAST_PATH_CASE, DRY_FAST_PATH_CASE)]
    if fast_path and fast_path[0].get("peak_memory_mib") is not None:
        step.peak_memory_gib = fast_path[0]["peak_memory_mib"] / 1024


def steps(
    runs: Path, bench_json: Path, data_dir: str | None, dry_run: bool, paper_seconds: float, compile_cache: Path
) -> list[Step]:
    python = sys.executable
    bench = [python, "-m", "wrncifar.bench", "--json", str(bench_json)]
    bench += DRY_BENCH if dry_run else ["--steps", "30", "--warmup", "15", "--cases", *BENCH_CASES]
    data = DRY_TRAIN if dry_run else [f"data.data_dir={data_dir}"]
    common = ["extras.print_config=false", "logger=csv", f"paths.compile_cache_dir={compile_cache}"]
    train = [python, "src/train.py"]
    fast = [*train, "experiment=wrn_cifar100_fast", *data, *common, *(DRY_COMPILE if dry_run else [])]
    warm = [*fast, "trainer.max_epochs=1", "test=false"]
    paper = [*train, "experiment=wrn_cifar100", *data, *common, *(["model.compile=false"] if dry_run else [])]
    # min_epochs=0: max_time may stop it inside its first epoch (the trainer config's min_epochs=1 would not).
    paper += [f"trainer.max_time={_max_time(paper_seconds)}", "trainer.min_epochs=0"]
    return [
        Step("bench", bench),
        Step("fast", [*fast, f"hydra.run.dir={runs / 'fast'}"]),
        Step("fast-warm", [*warm, f"hydra.run.dir={runs / 'fast-warm'}"]),
        Step("paper", [*paper, f"hydra.run.dir={runs / 'paper'}"]),
    ]


def _max_time(seconds: float) -> str:
    """Lightning's `DD:HH:MM:SS`."""
    total = max(int(seconds), 1)
    return f"00:{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def markdown(results: list[Step], device: str) -> str:
    cuda = torch.version.cuda or "none"
    lines = [
        f"Device: {device}; torch {torch.__version__} (CUDA {cuda}); {date.today().isoformat()}",
        "",
        "| step | command | exit | images/s | peak memory | wall time | first step after "
        "| compiled graphs (from cache) | test top-1 / top-5 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    hidden = ("hydra.run.dir", "--json", "paths.compile_cache_dir", str(results[0].command[0]) if results else "")
    for s in results:
        shown = " ".join(a for a in s.command[1:] if not a.startswith(hidden))
        shown = re.sub(r" \S+/bench\.json", "", shown)
        exit_code = s.status or str(s.returncode)
        rate = f"{s.images_per_sec:,.0f}" if s.images_per_sec else "–"
        first = f"{s.first_step_s:.1f} s" if s.first_step_s is not None else "–"
        top = f"{s.test_top1:.2%} / {s.test_top5:.2%}" if s.test_top1 is not None and s.test_top5 is not None else "–"
        graphs = f"{s.compiled_graphs} ({s.cached_graphs})" if s.compiled_graphs is not None else "–"
        memory = f"{s.peak_memory_gib:.2f} GiB" if s.peak_memory_gib is not None else "–"
        cells = [s.name, f"`{shown}`", exit_code, rate, memory, f"{s.wall_s:.0f} s", first, graphs, top]
        lines.append(f"| {' | '.join(cells)} |")
    start_ups = [f"- {s.name}: {s.first_step_s:.1f} s: {s.start_up}" for s in results if s.start_up]
    if start_ups:
        lines += ["", "Time to the first training step:", "", *start_ups]
    for s in results:
        if s.bench_cases or s.bench_failures:
            lines += ["", "The bench's cases (batch as in its command; warm-up: compilation from an empty cache):", ""]
            lines += bench_table(s.bench_cases or [], s.bench_failures or [])
    unreadable = [f"- {s.name}: {s.unreadable}" for s in results if s.unreadable]
    if unreadable:
        lines += ["", "Outputs that could not be read back:", "", *unreadable]
    return "\n".join(lines)


def bench_table(cases: list[dict], failures: list[dict]) -> list[str]:
    """The cases measured, then those that failed (each with its error in the images/s column)."""

    def num(value: float | None, spec: str, unit: str = "") -> str:
        return "–" if value is None else f"{value:{spec}}{unit}"

    lines = ["| case | images/s | MFU | warm-up | peak memory |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in cases:
        memory = None if r.get("peak_memory_mib") is None else r["peak_memory_mib"] / 1024
        cells = [
            r["case"],
            num(r["images_per_sec"], ",.0f"),
            num(r.get("mfu"), ".1%"),
            num(r.get("warmup_s"), ".1f", " s"),
        ]
        lines.append(f"| {' | '.join([*cells, num(memory, '.2f', ' GiB')])} |")
    lines += [f"| {f['case']} | failed: {f['error'].replace('|', '/')} | – | – | – |" for f in failures]
    return lines


def write_outputs(out: Path, runs: Path, results: list[Step], device: str) -> str:
    """`report.md`, and `runs.tar.gz` (the run folders without checkpoints), each replaced whole."""
    report = markdown(results, device)
    _replace(out / "report.md", lambda path: path.write_text(report + "\n"))

    def pack(path: Path) -> None:
        with tarfile.open(path, "w:gz") as tar:
            for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
                tar.add(folder, arcname=folder.name, filter=_without_checkpoints)

    _replace(out / "runs.tar.gz", pack)
    return report


def _without_checkpoints(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """No checkpoint, nor the temporary file of one a stopped step was writing (`.last.ckpt.<random>.tmp`)."""
    name = Path(member.name).name
    return None if name.endswith(".ckpt") or (".ckpt." in name and name.endswith(".tmp")) else member


def _replace(path: Path, write) -> None:
    partial = path.with_name(f".{path.name}.partial")
    write(partial)
    os.replace(partial, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wrncifar.gpu_report", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", help="the CIFAR-100 arrays (train.npz, test.npz, meta.json, SHA256SUMS)")
    parser.add_argument("--out", type=Path, help="default: docs/measurements/gpu_report_<date>")
    parser.add_argument("--budget-s", type=float, default=540, help="all the steps together (default 9 min)")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU, tiny and synthetic")
    args = parser.parse_args(argv)
    if not args.dry_run:
        if not torch.cuda.is_available():
            parser.error("no CUDA GPU here: run it on a GPU machine, or check it on the CPU with --dry-run")
        if not args.data_dir or not (Path(args.data_dir) / "train.npz").is_file():
            parser.error(f"--data-dir={args.data_dir}: give the folder of the CIFAR-100 arrays (with train.npz)")
        args.data_dir = str(Path(args.data_dir).resolve())  # the steps run from the checkout's root
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = (args.out or ROOT / "docs" / "measurements" / f"gpu_report_{date.today().isoformat()}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    device = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name()
    deadline = time.monotonic() + args.budget_s
    results: list[Step] = []
    # The run folders (checkpoints: gigabytes), and an empty compilation cache of the report's own: the fast
    # recipe starts cold, its one-epoch rerun warm.
    with tempfile.TemporaryDirectory(prefix="wrncifar-gpu-report-") as work:
        runs, cache = Path(work) / "runs", Path(work) / "compile_cache"
        runs.mkdir()
        for earlier in ("bench.json", "console.log"):  # an earlier report's, never read as this one's
            (out / earlier).unlink(missing_ok=True)
        for name in ("bench", "fast", "fast-warm", "paper"):
            left = deadline - time.monotonic()
            # The paper recipe gets whatever is left, less what its test and outputs need.
            paper_s = left - TEST_RESERVE_S if name == "paper" else 0
            all_steps = steps(runs, out / "bench.json", args.data_dir, args.dry_run, paper_s, cache)
            (step,) = [s for s in all_steps if s.name == name]
            if name == "paper" and left < PAPER_MIN_S and not args.dry_run:
                step.status = "skipped"
                print(f"== {step.name}: skipped, {left:.0f} s left", flush=True)
            else:
                print(f"== {step.name}: {' '.join(step.command[1:])}", flush=True)
                limit = min(left, BENCH_SHARE * args.budget_s) if name == "bench" else left
                bench_json = out / "bench.json" if name == "bench" else None
                run_step(step, runs / name, out / "console.log", timeout_s=limit, bench_json=bench_json)
            results.append(step)
            report = write_outputs(out, runs, results, device)
    print(report)
    return exit_status(results)


def exit_status(results: list[Step]) -> int:
    """1 when a step failed (a non-zero exit) or a recipe meant to run to its end did not (`fast`, `fast-warm`);
    the bench stopped at its share of the budget and the paper recipe stopped or skipped by it are the budget
    working as planned, so 0."""
    failed = [s for s in results if s.returncode not in (0, None) or (s.status and s.name in ("fast", "fast-warm"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

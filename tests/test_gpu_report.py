"""`make gpu-report DRY_RUN=1`: the GPU measurement command's four steps on the CPU (tiny model, synthetic data),
so that it works the first time it meets a GPU; its table is read back against the runs' own outputs."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import HANG_TIMEOUT_S, ROOT
from wrncifar.gpu_report import (
    BENCH_CASES,
    BENCH_SHARE,
    PAPER_MIN_S,
    Step,
    _read_bench,
    _read_metrics,
    exit_status,
    markdown,
    parse_args,
    run_step,
    write_outputs,
)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu_report")
    command = [sys.executable, "-m", "wrncifar.gpu_report", "--dry-run", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    return out, done


@pytest.mark.slow
def test_the_dry_run_runs_the_four_steps_and_writes_their_table(dry_run) -> None:
    out, done = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (out / "report.md").read_text()
    assert table.strip() in done.stdout
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"bench", "fast", "fast-warm", "paper"}
    assert "experiment=wrn_cifar100_fast" in rows["fast"][1] and "trainer.max_time=" in rows["paper"][1]
    assert "trainer.max_epochs=1" in rows["fast-warm"][1]
    for name in ("bench", "fast", "fast-warm", "paper"):
        assert rows[name][2] == "0", name
        assert "compile_cache_dir" not in rows[name][1]  # a temporary folder: not part of the command to rerun
    # What comes back from a lent machine: a few small files (at most 8), no checkpoint (each run's are in a
    # removed folder).
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "console.log", "report.md", "runs.tar.gz"]
    console = (out / "console.log").read_text()
    headers = [line.split(":")[0] for line in console.splitlines() if line.startswith("== ")]
    assert headers == ["== bench", "== fast", "== fast-warm", "== paper"]
    assert "plain/device/fp32/compiled:" in console and "First training step done" in console
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
        metrics = {n: tar.extractfile(f"{n}/csv/metrics.csv").read().decode() for n in ("fast", "paper")}
    assert {"fast/.hydra/config.yaml", "fast-warm/.hydra/config.yaml", "paper/csv/metrics.csv"} <= set(names)
    assert not [n for n in names if n.endswith(".ckpt")]
    for name in ("fast", "paper"):
        test = [r for r in csv.DictReader(io.StringIO(metrics[name])) if r.get("test/acc")][-1]
        assert rows[name][8].rstrip(" |") == f"{float(test['test/acc']):.2%} / {float(test['test/acc_top5']):.2%}"
        assert rows[name][6].endswith(" s")  # the time to the first training step, from the run's own log line
    # Cold, then warm: the fast recipe compiles into an empty cache, its one-epoch rerun finds every graph there.
    cold, warm = (rows[name][7].split() for name in ("fast", "fast-warm"))
    assert int(cold[0]) > 0 and cold[1] == "(0)"
    assert warm[0] == cold[0] and warm[1] == f"({cold[0]})"
    assert rows["paper"][7] == "–"  # not compiled in the dry run
    assert {rows[name][4] for name in ("bench", "fast", "fast-warm", "paper")} == {"–"}  # no GPU memory on the CPU
    # Where each recipe's time to the first step went, as its run logged it.
    phases = r"[\d.]+ s Python and Hydra, [\d.]+ s imports, .* s the step"
    assert re.search(rf"^- fast: [\d.]+ s: {phases} \(torch\.compile: ", table, re.M)
    assert re.search(rf"^- paper: [\d.]+ s: {phases}$", table, re.M)
    bench = json.loads((out / "bench.json").read_text())
    assert [r["case"] for r in bench["results"]] == ["plain/device/fp32/eager", "plain/device/fp32/compiled"]
    # Below the table, each bench case with its rate and warm-up, as the bench's JSON has them.
    for result in bench["results"]:
        assert f"| {result['case']} | {result['images_per_sec']:,.0f} | – | {result['warmup_s']:.1f} s | – |" in table


def test_make_gpu_report_dry_run_is_this_command() -> None:
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", "gpu-report", "DRY_RUN=1", "OUT=/tmp/x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT_S,
    )
    assert done.stdout.splitlines()[-1].split()[1:] == ["-m", "wrncifar.gpu_report", "--dry-run", "--out", '"/tmp/x"']


def test_without_a_gpu_the_real_run_says_to_use_the_dry_run(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--data-dir", "data"])
    assert "no CUDA GPU here: run it on a GPU machine, or check it on the CPU with --dry-run" in capsys.readouterr().err


def test_a_recipes_peak_gpu_memory_is_its_largest_epoch_peak(tmp_path) -> None:
    rows = [
        {"epoch": "0", "train/images_per_sec": "20000", "gpu/max_memory_allocated_gib": "3.1", "test/acc": ""},
        {"epoch": "1", "train/images_per_sec": "22000", "gpu/max_memory_allocated_gib": "3.4", "test/acc": ""},
        {"epoch": "1", "train/images_per_sec": "", "gpu/max_memory_allocated_gib": "", "test/acc": "0.75"},
    ]
    path = tmp_path / "metrics.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    step = Step("fast", ["python", "src/train.py"])
    _read_metrics(step, path)
    assert (step.peak_memory_gib, step.images_per_sec, step.test_top1) == (3.4, 21000, 0.75)
    assert "| 21,000 | 3.40 GiB |" in markdown([step], "NVIDIA H200")


def test_a_step_stopped_at_its_time_limit_keeps_what_it_printed(tmp_path) -> None:
    """The bench prints each case as it ends; killed at its share of the budget, those lines must be in its log."""
    printing = "print('case 1: 30,000 images/s'); import time; time.sleep(60)"
    step = run_step(Step("bench", [sys.executable, "-c", printing]), tmp_path / "bench", tmp_path / "log", timeout_s=3)
    assert (step.status, step.returncode) == ("stopped", None)
    assert "case 1: 30,000 images/s" in (tmp_path / "log").read_text()


def test_each_steps_console_is_in_the_output_folder_while_it_runs_and_read_back_alone(tmp_path) -> None:
    """Killed with the whole report at the device call's limit, a step leaves its lines in the output folder, which
    comes back; nothing is moved there after the step. Each step's numbers come from its own lines."""
    console = tmp_path / "out" / "console.log"
    console.parent.mkdir()
    # The step itself reads the output folder's console: its line must be there before it ends.
    checks = (
        f"print('case 1: 30,000 images/s'); import sys; sys.exit(0 if 'case 1' in open({str(console)!r}).read() else 3)"
    )
    first = run_step(Step("bench", [sys.executable, "-c", checks]), tmp_path / "runs" / "bench", console, 60)
    assert first.returncode == 0
    logs = "print('First training step done 4.5 s after the process started: 2.0 s imports')"
    second = run_step(Step("fast", [sys.executable, "-c", logs]), tmp_path / "runs" / "fast", console, 60)
    assert (second.returncode, second.first_step_s, second.start_up) == (0, 4.5, "2.0 s imports")
    assert first.first_step_s is None
    lines = console.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "== bench",
        "case 1",
        "== fast",
        "First training step done 4.5 s after the process started",
    ]
    assert not (tmp_path / "runs" / "bench" / "console.log").exists()  # one copy, the one that comes back


def test_an_output_cut_short_is_named_in_the_report_not_a_crash(tmp_path) -> None:
    bench_json = tmp_path / "bench.json"
    bench_json.write_text('{"results": [{"case": "plain/device/bf16/eager", "images_')
    step = run_step(Step("bench", [sys.executable, "-c", "pass"]), tmp_path / "bench", tmp_path / "log", 60, bench_json)
    assert step.returncode == 0 and step.unreadable.startswith("JSONDecodeError")
    assert "Outputs that could not be read back:\n\n- bench: JSONDecodeError" in markdown([step], "cpu")


@pytest.mark.slow
def test_a_report_whose_budget_runs_out_still_writes_its_table_and_outputs(tmp_path) -> None:
    command = [sys.executable, "-m", "wrncifar.gpu_report", "--dry-run", "--budget-s", "1", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    table = (tmp_path / "report.md").read_text()
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and "`" in line]
    assert [(r[0].strip("| "), r[2]) for r in rows] == [(n, "stopped") for n in ("bench", "fast", "fast-warm", "paper")]
    assert "== fast: " in (tmp_path / "console.log").read_text()


def test_the_budget_stopping_the_bench_or_the_paper_recipe_is_no_failure_a_failed_or_unfinished_step_is() -> None:
    def report(**status: tuple[int | None, str]) -> list[Step]:
        return [Step(name, [], returncode=code, status=why) for name, (code, why) in status.items()]

    done = (0, "")
    assert exit_status(report(bench=(None, "stopped"), fast=done, **{"fast-warm": done}, paper=(None, "skipped"))) == 0
    assert exit_status(report(bench=done, fast=done, **{"fast-warm": done}, paper=(None, "stopped"))) == 0
    assert exit_status(report(bench=(1, ""), fast=done, **{"fast-warm": done}, paper=done)) == 1
    assert exit_status(report(bench=done, fast=(None, "stopped"))) == 1, "the fast recipe is measured to its end"


def test_the_packed_runs_leave_out_checkpoints_and_the_temporary_file_of_one_cut_short(tmp_path) -> None:
    run = tmp_path / "runs" / "paper"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("console.log", "checkpoints/last.ckpt", "checkpoints/.last.ckpt.k2j3_x.tmp", "checkpoints/notes.tmp"):
        (run / name).write_text("x")
    (tmp_path / "out").mkdir()
    write_outputs(tmp_path / "out", tmp_path / "runs", [Step("paper", ["train.py"])], "cpu")
    with tarfile.open(tmp_path / "out" / "runs.tar.gz") as tar:
        names = sorted(tar.getnames())
    assert names == ["paper", "paper/checkpoints", "paper/checkpoints/notes.tmp", "paper/console.log"]


def test_the_bench_measures_compiled_blocks_before_the_cuda_graphs_and_lists_a_failed_case(tmp_path) -> None:
    """compiled-blocks is what the report exists to measure: it runs before the last case, the first one the
    bench's share of the budget cuts; a case that failed is listed with its error."""
    assert BENCH_CASES.index("plain/device/bf16/compiled-blocks") < BENCH_CASES.index("plain/device/bf16/cudagraphs")
    result = {"case": BENCH_CASES[0], "images_per_sec": 30000.0, "warmup_s": 1.0, "mfu": None, "peak_memory_mib": None}
    failure = {"case": "plain/device/bf16/cudagraphs", "error": "RuntimeError: capture failed"}
    step = Step("bench", ["python", "-m", "wrncifar.bench"], returncode=1)
    _read_bench(step, {"results": [result], "failures": [failure]})
    table = markdown([step], "NVIDIA H200")
    assert f"| {BENCH_CASES[0]} | 30,000 | – | 1.0 s | – |" in table
    assert "| plain/device/bf16/cudagraphs | failed: RuntimeError: capture failed | – | – | – |" in table
    assert exit_status([step]) == 1


def test_the_documented_device_command_fits_one_600_s_call_and_leaves_the_paper_recipe_its_share() -> None:
    """A device call runs at most 600 s, of which unpacking, checksums, the wheels' install and Python's start take
    15-30 s; the fast recipe takes 150-170 s of what the bench leaves."""
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    (budget,) = {float(b) for b in re.findall(r"wrncifar\.gpu_report .*--budget-s (\d+)", docs)}
    assert budget + 60 <= 600
    assert budget * (1 - BENCH_SHARE) - 170 >= PAPER_MIN_S + 60
    assert "budget_left_s" in docs  # the last call's budget comes from the device's status

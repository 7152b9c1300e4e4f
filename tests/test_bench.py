from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import wrncifar.bench as bench
from tests.conftest import HANG_TIMEOUT_S
from wrncifar.bench import all_cases, main, selected_cases

TINY = ["--device", "cpu", "--batch-size", "16", "--steps", "2", "--warmup", "1", "--workers", "0"]
TINY += ["--train-images", "128", "--widths", "4", "8", "8", "8", "--blocks-per-stage", "1"]


def test_cases_cover_both_loops_pipelines_precisions_and_compilation() -> None:
    names = {c.name for c in all_cases()}
    assert {"plain/naive/fp32/eager", "plain/naive/bf16/eager"} <= names
    # The CPU default (the project's loader), Lightning against the plain loop, in the standard cases.
    loader = {f"{loop}/loader/{p}/eager" for loop in ("plain", "lightning") for p in ("fp32", "bf16")}
    assert loader <= {c.name for c in selected_cases(None)}
    for loop in ("plain", "lightning"):
        for precision in ("fp32", "bf16"):
            for mode in ("eager", "compiled"):
                assert f"{loop}/device/{precision}/{mode}" in names
        for variant in ("compiled-blocks", "max-autotune", "cudagraphs"):  # only when named
            assert f"{loop}/device/bf16/{variant}" in names
            assert f"{loop}/device/bf16/{variant}" not in {c.name for c in selected_cases(None)}
    assert [c.name for c in selected_cases(["bf16/compiled-blocks"])] == [
        "plain/device/bf16/compiled-blocks",
        "lightning/device/bf16/compiled-blocks",
    ]
    # A full name is that case alone, and the order given is the order run.
    assert [c.name for c in selected_cases(["lightning/device/bf16/compiled", "plain/device/bf16/compiled"])] == [
        "lightning/device/bf16/compiled",
        "plain/device/bf16/compiled",
    ]


@pytest.mark.slow
def test_tiny_benchmark_measures_every_eager_case_and_writes_its_report(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    main([*TINY, "--cases", "eager", "--profile", "plain/device/fp32/eager", "--json", str(out)])
    report = json.loads(out.read_text())
    results = {r["case"]: r for r in report["results"]}
    assert set(results) == {c.name for c in all_cases() if not c.compiled}
    naive = results["plain/naive/fp32/eager"]["images_per_sec"]
    for r in results.values():
        assert r["images_per_sec"] > 0 and r["ms_per_step"] > 0
        assert r["ms_per_step"] == pytest.approx(1000 * 16 / r["images_per_sec"])
        assert r["tflops_per_sec"] == pytest.approx(r["images_per_sec"] * report["train_flops_per_image"] / 1e12)
        assert r["vs_naive"] == pytest.approx(r["images_per_sec"] / naive)
        assert r["peak_memory_mib"] is None and r["mfu"] is None  # CPU: no device memory, no known peak
        assert r["warmup_s"] > 0
    for pipeline in ("device", "loader"):
        lightning, plain = results[f"lightning/{pipeline}/bf16/eager"], results[f"plain/{pipeline}/bf16/eager"]
        assert lightning["vs_plain_device"] == pytest.approx(lightning["images_per_sec"] / plain["images_per_sec"])
    assert results["plain/naive/fp32/eager"]["vs_plain_device"] is None
    assert set(report["pipeline_images_per_sec"]) == {"on-device (cpu)", "PIL per DataLoader worker (cpu)"}
    assert "Top kernels of plain/device/fp32/eager" in report["profile"]
    ckpt = report["checkpoint_s"]
    assert set(ckpt) == {"size_mib", "foreground_s", "background_first_s", "background_s", "write_s"}
    assert min(ckpt.values()) > 0
    printed = capsys.readouterr().out
    assert "| plain/naive/fp32/eager |" in printed and "| data pipeline alone |" in printed
    assert "| written in the background, every later save (the copy into the last snapshot's memory) |" in printed


@pytest.mark.slow
def test_each_compiled_case_compiles_from_an_empty_cache_of_its_own(tmp_path, monkeypatch) -> None:
    """A bench of compiled cases measures a first run's compilation (warm-up) every time: run twice, no graph ever
    comes from a cache, and the user's cache folder is neither used nor changed."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "users-cache"))
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    counters.clear()
    for attempt in range(2):
        out = tmp_path / f"bench{attempt}.json"
        main([*TINY, "--cases", "plain/device/bf16/compiled-blocks", "--json", str(out)])
        (result,) = json.loads(out.read_text())["results"]
        assert result["case"] == "plain/device/bf16/compiled-blocks"
        assert result["images_per_sec"] > 0 and result["warmup_s"] > 0
    assert counters["inductor"]["fxgraph_cache_miss"] > 0
    assert counters["inductor"]["fxgraph_cache_hit"] == 0
    assert not (tmp_path / "users-cache").exists()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "users-cache")
    assert "TRITON_CACHE_DIR" not in os.environ


def test_a_failing_case_is_recorded_with_its_error_and_the_cases_after_it_still_run(
    tmp_path, monkeypatch, capsys
) -> None:
    """CUDA graphs, say, fail on a machine where they never ran: the bench goes on with the next case."""
    timed = []

    def time_case(case, *args, **kwargs) -> tuple[float, float, None]:
        timed.append(case.name)
        if case.name == "plain/device/bf16/cudagraphs":
            raise RuntimeError("CUDA graph capture failed | on this machine\nmore detail")
        return 0.5, 1.0, None

    monkeypatch.setattr(bench, "time_case", time_case)
    out = tmp_path / "bench.json"
    cases = ["plain/device/bf16/eager", "plain/device/bf16/cudagraphs", "plain/device/bf16/compiled-blocks"]
    assert main([*TINY, "--cases", *cases, "--json", str(out)]) == 1
    assert timed == cases
    report = json.loads(out.read_text())
    assert [r["case"] for r in report["results"]] == [cases[0], cases[2]]
    assert all(r["images_per_sec"] == 2 * 16 for r in report["results"])  # 2 steps of 16 images in 1 s
    error = "RuntimeError: CUDA graph capture failed | on this machine"
    assert report["failures"] == [{"case": cases[1], "error": error}]
    printed = capsys.readouterr()
    assert "| plain/device/bf16/cudagraphs | RuntimeError: CUDA graph capture failed / on this machine |" in printed.out
    assert "Traceback" in printed.err and "more detail" in printed.err  # the whole error, on the console


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "must be positive"),
        (["--train-images", "99"], "--train-images must be at least 100"),
        (["--profile", "lightning/device/bf16/eager"], "plain-loop case name"),
    ],
)
def test_bad_arguments_exit_with_a_usage_message(args, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY, *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", [[sys.executable, "-m", "wrncifar.bench"], [str(Path(sys.executable).parent / "wrncifar-bench")]]
)
def test_the_module_and_the_console_script_are_the_same_command(command: list[str]) -> None:
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m wrncifar.bench") and "--batch-size" in done.stdout

"""Data-parallel training as a SLURM batch job of two tasks on two nodes (gloo on CPU), as on a cluster:
Lightning's SLURM environment takes the world size, ranks and node rank from SLURM_NTASKS / SLURM_PROCID /
SLURM_NODEID, so `trainer.num_nodes=2` is tested, not only documented. Only rank 0 writes, and the test metrics
are exact."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from tests.conftest import HANG_TIMEOUT_S, ROOT, last_logged, read_metrics
from tests.run.test_distributed import CLASSES, DDP_DATA, PER_DEVICE_BATCH
from tests.slurm.cluster import Cluster
from tests.slurm.conftest import wait_for_job
from wrncifar.run.fit_and_test import train

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


@pytest.fixture(scope="module")
def two_node_run(slurm_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict]:
    """One epoch of `trainer=ddp_cpu trainer.devices=1 trainer.num_nodes=2` (batch 8 per process) in an sbatch job
    of one task on each of the two nodes; its run folder, its SLURM log and its job record."""
    folder = tmp_path_factory.mktemp("slurm_ddp")
    run_dir = folder / "run"
    args = [*DDP_DATA, "trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2"]
    args += [f"data.batch_size={PER_DEVICE_BATCH}", f"hydra.run.dir={run_dir}"]
    script = folder / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        "#SBATCH --nodes=2 --ntasks-per-node=1 --cpus-per-task=1\n"
        f"#SBATCH --output={folder}/slurm-%j.out\n"
        f"cd {ROOT}\n"
        f"srun {shlex.join([sys.executable, str(ROOT / 'src' / 'train.py'), *args])}\n"
    )
    job = slurm_cluster.run("sbatch", "--parsable", str(script)).stdout.strip()
    record = wait_for_job(slurm_cluster, job, ENDED, timeout=HANG_TIMEOUT_S)
    log = (folder / f"slurm-{job}.out").read_text()
    assert record["JobState"] == "COMPLETED", log[-3000:]
    return run_dir, log, record


def test_two_nodes_train_one_run_and_only_rank_0_writes(two_node_run) -> None:
    run_dir, log, record = two_node_run
    assert record["NodeList"] == "localhost,vm" or record["NumNodes"] == "2", record
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    rows = read_metrics(run_dir)
    assert len([r for r in rows if r.get("val/acc")]) == 1 and len([r for r in rows if r.get("test/acc")]) == 1
    assert (run_dir / "train.log").read_text().count("Outputs:") == 1  # the other node logs to the console only


def test_two_node_test_metrics_equal_a_single_process_test_of_its_checkpoint(two_node_run, make_config) -> None:
    run_dir, _, _ = two_node_run
    rows = read_metrics(run_dir)
    (best,) = (run_dir / "checkpoints").glob("epoch_*.ckpt")
    single = train(make_config([*DDP_DATA, "trainer=cpu", "train=false", f"ckpt_path={best}", "logger=null"]))
    for key in ("test/acc", "test/acc_top5", "test/loss"):
        assert last_logged(rows, key) == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
    for key in ("val/acc", "test/acc"):  # counts of 99 images: no image seen twice
        hits = last_logged(rows, key) * CLASSES
        assert hits == pytest.approx(round(hits), abs=1e-3), key

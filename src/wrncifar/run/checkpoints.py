"""Checkpoints that survive crashes: atomic writes, checked loads, the furthest valid one of a run, clear mismatches."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import weakref
import zipfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.apply_func import apply_to_collection
from torch import nn

from wrncifar.run.training_run import run_folder_of

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as asked: missing, unreadable, or for another network."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the previous file at that path is untouched."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside its target, flushes it to disk, then renames it over the
    target: a crash or a full disk mid-write leaves the previous checkpoint whole, never a truncated one.

    With `background=True` the writing happens in a thread of its own while training goes on: `save_checkpoint`
    copies the tensors to host memory (the state at that moment) and returns. The copies go into the host tensors of
    a snapshot already written (pinned memory for a GPU's tensors), so that after the first save a checkpoint costs
    training a memory copy, not fresh memory and page faults; at most `MAX_PENDING` snapshots are kept, and
    `teardown` frees them. Writes and removals run in the order
    they were asked for; with `MAX_PENDING` of them waiting, the next one waits too (a slow disk holds training
    back rather than filling memory with copies). Loading a checkpoint, `teardown` (the end of fit or test) and
    `wait()` first wait for every write asked so far, and a write that failed is raised by the next call (its
    CheckpointWriteError: the previous file at that path is whole). In a multi-process run (DDP) rank 0 alone saves;
    another rank that is to read a checkpoint of this run first waits for rank 0's writes (`checkpoints_written`).
    """

    def __init__(self, background: bool = False) -> None:
        super().__init__()
        self.background = background
        self._writer: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()
        self._free_snapshots: deque[list[torch.Tensor]] = deque()  # host tensors of snapshots written, to reuse
        _WRITERS.add(self)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        if not self.background:
            self.wait()  # after any write still pending from before: the order asked for
            write_atomically(checkpoint, Path(path))
            return
        self._make_room()  # first, so that the snapshot may reuse the host tensors of a write that just finished
        # On this thread: the state as it is now, whatever the next steps change (tensors in place, dicts).
        snapshot, host_tensors = _snapshot(checkpoint, self._free_snapshots.pop() if self._free_snapshots else [])
        self._submit(self._write_snapshot, snapshot, Path(path), host_tensors)

    def _write_snapshot(self, snapshot: dict[str, Any], path: Path, host_tensors: list[torch.Tensor]) -> None:
        try:
            write_atomically(snapshot, path)
        finally:
            self._free_snapshots.append(host_tensors)  # deque: appends and pops are thread-safe

    def remove_checkpoint(self, path: str | Path) -> None:
        if self._pending:  # after the writes asked before it: never a file that is still to be written
            self._submit(super().remove_checkpoint, path)
        else:
            super().remove_checkpoint(path)

    def load_checkpoint(self, path: str | Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.wait()
        return super().load_checkpoint(path, *args, **kwargs)

    def teardown(self) -> None:
        try:
            self.wait()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None
            self._free_snapshots.clear()

    def wait(self) -> None:
        """Return once every write and removal asked so far is done; raise the first of them that failed."""
        while self._pending:
            self._pending.popleft().result()

    def _make_room(self) -> None:
        """Collect the finished writes, and wait for the oldest while `MAX_PENDING` are pending."""
        while self._pending and (self._pending[0].done() or len(self._pending) >= MAX_PENDING):
            self._pending.popleft().result()  # a failed write stops the run here, at its next checkpoint

    def _submit(self, task: Callable[..., None], *args: Any) -> None:
        self._make_room()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._pending.append(self._writer.submit(task, *args))


# Writes waiting in a background writer at most (each a copy of the checkpoint in host memory).
MAX_PENDING = 2
_WRITERS: weakref.WeakSet[AtomicCheckpointIO] = weakref.WeakSet()


def wait_for_checkpoint_writes() -> None:
    """Return once every checkpoint handed to a background writer of this process is on disk: for code that reads
    the files during the run (a logger uploading them)."""
    for writer in list(_WRITERS):
        writer.wait()


def checkpoints_written(trainer: Trainer) -> None:
    """Return, on every process of the run, once each checkpoint it saved is on disk: rank 0 writes them (in the
    background), so in a multi-process run the others wait here for rank 0 before they read one (the test of the
    best checkpoint after fit). Every process of the run must call it."""
    wait_for_checkpoint_writes()
    trainer.strategy.barrier("checkpoints written")


def _snapshot(checkpoint: dict[str, Any], reusable: list[torch.Tensor]) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """A copy of `checkpoint` whose tensors are in host memory, and those host tensors in the order they were
    copied. The i-th tensor is copied into `reusable[i]` where that has its shape, strides and dtype (the same
    checkpoint saved again), into new host memory otherwise."""
    host_tensors: list[torch.Tensor] = []

    def copy(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        i = len(host_tensors)
        host = reusable[i] if i < len(reusable) else None
        if host is None or (host.shape, host.stride(), host.dtype) != (tensor.shape, tensor.stride(), tensor.dtype):
            # Pinned for a GPU's tensors: the copy is a direct transfer, several times faster than to pageable memory.
            host = torch.empty_like(tensor, device="cpu", pin_memory=tensor.is_cuda)
        host.copy_(tensor)  # synchronous: the state at this step, whatever the next steps change
        host_tensors.append(host)
        return host

    return apply_to_collection(checkpoint, torch.Tensor, copy), host_tensors


def write_atomically(checkpoint: dict[str, Any], target: Path) -> None:
    """Save `checkpoint` at `target` through a flushed temporary file renamed over it (see AtomicCheckpointIO)."""
    remove_stale_temporaries(target)
    tmp_name = ""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes it private; a checkpoint is not
        os.replace(tmp_name, target)
    # torch.save's zip writer reports a failed write (a full disk, a file-size limit) as a RuntimeError.
    except (OSError, RuntimeError) as err:
        if tmp_name:
            Path(tmp_name).unlink(missing_ok=True)
        free = shutil.disk_usage(_existing_parent(target)).free / 2**20
        if isinstance(err, OSError) and err.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            what, hint = err.strerror or str(err), "check that the folder is writable"
        else:
            what = err.strerror if isinstance(err, OSError) else f"the write stopped short: {str(err)[:120]}"
            hint = "free some disk space (or raise the file-size limit, ulimit -f)"
        raise CheckpointWriteError(
            f"could not write checkpoint {target} ({what}; {free:,.0f} MiB free there): {hint}, "
            f"then resume; the previous checkpoint at that path, if any, is intact"
        ) from err
    _fsync_dir(target.parent)


def remove_stale_temporaries(target: Path) -> None:
    """Delete the temporary files an earlier write of `target` left when its process was killed mid-write. Only
    one process writes a run's checkpoints (the run holds its folder's lock; under DDP, rank 0 alone), so a
    temporary of `target` that exists before a write is stale."""
    for stale in target.parent.glob(f".{target.name}.*.tmp") if target.parent.is_dir() else []:
        stale.unlink(missing_ok=True)


def _existing_parent(path: Path) -> Path:
    return next(p for p in path.parents if p.exists())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_checkpoint_file(path: Path, mmap: bool = False) -> Any:
    """The object saved at `path`, loaded with `weights_only=True` (no code runs); CheckpointError if unusable.

    With `mmap=True` the tensors are mapped from the file rather than read: what is saved around them (the step,
    the loops' progress) costs its own pickle, 17 KB of WRN-28-10's 131 MB checkpoint with its optimizer state."""
    check_checkpoint_path(path)
    try:
        # Only the zip format (every torch.save since 1.6) can be mapped; an older or damaged file is read whole,
        # which says what is wrong with it.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except OSError as err:  # the file is there but cannot be read: not a matter of its contents
        raise CheckpointError(f"checkpoint {path} cannot be read: {err.strerror or err}") from err
    except Exception as err:  # truncated zip, garbage bytes, or a pickle that wants to run code
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a checkpoint ({type(err).__name__}: {err})"
        ) from err


def check_checkpoint_path(path: Path, training: bool = True) -> None:
    """CheckpointError unless `path` is a file, saying what it is instead: missing, or a folder (a run's folder,
    or its checkpoints/, is the commonest slip: its checkpoints are named, and for training (`training`) resume=
    for the run)."""
    if path.is_file():
        return
    if not path.exists():
        resume = " (or resume=<run_dir>)" if training else ""
        raise CheckpointError(f"checkpoint {path} does not exist: pass the path of a .ckpt file{resume}")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a regular file: pass the path of a .ckpt file")
    run = run_folder_of(path)
    where = path / "checkpoints" if run is not None and path.resolve() == run else path
    names = sorted(p.name for p in where.glob("*.ckpt"))
    shown = ", ".join(names[:4]) + (f", … ({len(names)} in all)" if len(names) > 4 else "")
    message = f"checkpoint {path} is a folder, not a checkpoint file: pass the path of a .ckpt file"
    if names:
        message += f" in {where} ({shown})"
    if run is not None and training:
        message += f", or continue the training run {run} in its own folder with resume={run}"
    raise CheckpointError(message)


def is_lightning_checkpoint(checkpoint: Any) -> bool:
    """Whether `checkpoint` is a Lightning checkpoint (weights, optimizer, loops) rather than a plain state_dict."""
    return isinstance(checkpoint, dict) and "pytorch-lightning_version" in checkpoint and "state_dict" in checkpoint


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """The Lightning checkpoint at `path` (see `read_checkpoint_file`, also for `mmap`); CheckpointError if it is
    not one."""
    checkpoint = read_checkpoint_file(path, mmap)
    if is_lightning_checkpoint(checkpoint):
        return checkpoint
    if isinstance(checkpoint, dict) and ("state_dict" in checkpoint or _all_tensors(checkpoint)):
        raise CheckpointError(
            f"checkpoint {path} holds plain network weights, not a Lightning checkpoint (no optimizer or schedule "
            f"to continue): start a new run from them with init_from={path}; eval.py evaluates them as they are"
        )
    raise CheckpointError(f"checkpoint {path} has no state_dict: it is not a Lightning checkpoint")


def _all_tensors(mapping: dict) -> bool:
    return bool(mapping) and all(isinstance(v, torch.Tensor) for v in mapping.values())


def network_weights(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    """The network's own state_dict in `checkpoint`, whatever wrote it: a Lightning checkpoint of this project
    (`net.` prefix), a plain `torch.save(net.state_dict())` (the seed's code), a `{"state_dict": …, "epoch": …}`
    dict of a plain training loop, or any of these from `nn.DataParallel`/`torch.compile` (`module.`, `_orig_mod.`)."""
    weights = checkpoint
    if isinstance(weights, dict):
        weights = next(
            (weights[k] for k in ("state_dict", "model", "net") if isinstance(weights.get(k), dict)), weights
        )
    if not isinstance(weights, dict) or not _all_tensors(weights):
        raise CheckpointError(f"checkpoint {path} holds no network weights (a dict of tensors) that could be read")
    if is_lightning_checkpoint(checkpoint) and any(k.startswith("net.") for k in weights):
        # This project's LightningModule: the network's weights beside the module's own states (val_acc_best).
        weights = {k: v for k, v in weights.items() if k.startswith("net.")}
    for prefix in ("net.", "module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in weights):
            weights = {k[len(prefix) :]: v for k, v in weights.items()}
    return weights


def load_network_weights(net: nn.Module, path: Path) -> None:
    """Load the network weights of the checkpoint at `path` (see `network_weights`) into `net`, every tensor
    matched by name and shape; CheckpointError listing the differences otherwise."""
    weights = network_weights(read_checkpoint_file(path), path)
    _raise_on_mismatch(net.state_dict(), weights, path)
    net.load_state_dict(weights, strict=True)


def furthest_valid_checkpoint(folder: Path) -> Path:
    """The checkpoint in `folder` that got furthest, among those that load: the largest `global_step` saved in it,
    on a tie `last.ckpt` (written after the epoch's validation), then the most recently written (`last.ckpt` at
    epoch ends and on a signal, `step.ckpt` every N steps, the best ones). Not the newest file: a copied run folder
    (`cp -r`) dates each file by when it was copied. One that does not load is named and skipped for the next.

    The steps are read with the tensors mapped, not loaded (`mmap`); the one chosen is then loaded whole, so that
    damaged tensors count as not loading. Raises CheckpointError when none loads: a resumed run never silently
    starts from scratch.
    """
    paths = list(folder.glob("*.ckpt"))
    if not paths:
        raise CheckpointError(f"no checkpoint in {folder}: nothing to resume from")
    problems = []

    def skip(err: CheckpointError) -> None:
        problems.append(str(err))
        log.warning("Skipping %s", err)

    progress = {}
    for path in paths:
        try:
            progress[path] = int(load_checkpoint(path, mmap=True).get("global_step", 0))
        except CheckpointError as err:
            skip(err)
    ranked = sorted(progress, key=lambda p: (progress[p], p.name == "last.ckpt", p.stat().st_mtime_ns), reverse=True)
    for candidate in ranked:
        try:
            load_checkpoint(candidate)
        except CheckpointError as err:
            skip(err)
            continue
        if problems:
            log.warning("Resuming from %s, the furthest checkpoint that loads", candidate)
        return candidate
    raise CheckpointError(f"no checkpoint in {folder} loads: " + "; ".join(problems))


def check_compatible(model: nn.Module, checkpoint: dict[str, Any], path: Path) -> None:
    """CheckpointError if `checkpoint` is not `model`'s: its state_dict not a dict, or values of the model's tensors
    that are not tensors, or (listed) missing, unexpected and reshaped tensors. The same for the raw weights an
    EMA run saves beside the averaged ones (`current_model_state`), which its resume loads."""
    for key in ("state_dict", "current_model_state"):
        saved = checkpoint.get(key)
        if saved is None and key != "state_dict":
            continue
        if not isinstance(saved, dict):
            raise CheckpointError(
                f"checkpoint {path} is damaged or was not written by training: its {key} is a "
                f"{type(saved).__name__}, not a dict of tensors; use a checkpoint as training saved it"
            )
        _raise_on_mismatch(model.state_dict(), saved, path)


def _raise_on_mismatch(expected: dict[str, Any], saved: dict[str, Any], path: Path) -> None:
    # Checked first: a checkpoint is untrusted data, and load_state_dict fails on such a value with a traceback.
    not_tensors = [
        f"{k} ({type(saved[k]).__name__})"
        for k, v in expected.items()
        if k in saved and isinstance(v, torch.Tensor) and not isinstance(saved[k], torch.Tensor)
    ]
    if not_tensors:
        raise CheckpointError(
            f"checkpoint {path} is damaged or was not written by training: these weights are not tensors: "
            f"{_listed(not_tensors)}; use a checkpoint as training saved it"
        )
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    reshaped = [
        f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in saved and isinstance(v, torch.Tensor) and tuple(saved[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or reshaped):
        return
    parts = []
    for title, items in [("missing", missing), ("unexpected", unexpected), ("different shape", reshaped)]:
        if items:
            parts.append(f"{title}: {_listed(items)}")
    raise CheckpointError(
        f"checkpoint {path} is for a different network than the configured model ({'; '.join(parts)}); "
        "use the model config the checkpoint was trained with (eval.py reads it from the run's .hydra/config.yaml; "
        "model.net.* overrides set it for a checkpoint outside a run)"
    )


def _listed(items: list[str]) -> str:
    """The first 8 of `items`, and how many there are in all when there are more."""
    return ", ".join(items[:8]) + (f", … ({len(items)} in all)" if len(items) > 8 else "")

"""Files the project writes into run folders: whole or not at all, and never through a symbolic link.

Each file is written to a temporary file beside it and renamed over the target. A rename replaces a symbolic link
itself rather than the file it points to, so a link planted in a run folder (`curves.png` → someone's file)
cannot make the project overwrite anything outside; a folder that is a link is refused by name.

Text read from data (an image's file name, a class name) that goes into a CSV passes through `spreadsheet_text`,
so that opening the CSV in a spreadsheet never runs it as a formula.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

# How a cell starts when a spreadsheet reads it as a formula (OWASP's list for CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class OutputFolderError(RuntimeError):
    """An output folder is a symbolic link the project did not create, or a file."""


def output_folder(folder: Path, within: Path) -> Path:
    """`folder`, created if missing; OutputFolderError (`check_output_folder`) if it cannot hold the outputs."""
    check_output_folder(folder, within)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_output_folder(folder: Path, within: Path) -> None:
    """OutputFolderError if `folder` is a file, or if it or a folder between `within` (a run folder, which may
    itself be a link, as `logs/` on a cluster often is) and it is a symbolic link; nothing is created."""
    parts = [folder, *folder.parents]
    below = parts[: parts.index(within)] if within in parts else [folder]
    for part in below:
        if part.is_symlink():
            raise OutputFolderError(
                f"{part} is a symbolic link: outputs are not written through it; remove the link or pass another folder"
            )
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{folder} is a file, not a folder: pass a folder to write the outputs to")


def write_file(path: Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` to write a temporary file beside `path`, then rename it over `path`; return `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def spreadsheet_text(cell: str) -> str:
    """`cell` for a CSV: with a leading `'` when it starts like a formula (`FORMULA_STARTS`: `=cmd|…`,
    `@SUM(…)`, `-2+3`), so that a spreadsheet shows it as the text it is; numbers (`-0.5`) are kept as they are."""
    if not cell.startswith(FORMULA_STARTS):
        return cell
    try:
        float(cell)
    except ValueError:
        return "'" + cell
    return cell

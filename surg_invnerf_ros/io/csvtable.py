"""Small, strict CSV tables (timestamps.csv, queries.csv, kinematics.csv of DESIGN §2.1).

Every table has a fixed header; each value is an integer or a finite float. Errors are one line
naming the file, the line and the column, so a hand-edited file is easy to fix.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ..errors import InputError


def read_csv_table(path: str | Path, columns: tuple[str, ...], kinds: str) -> dict[str, np.ndarray]:
    """Read a CSV with exactly `columns` as its header.

    Args:
        path: the file.
        columns: expected header names, in order.
        kinds: one letter per column: "i" int64, "f" finite float64.

    Returns:
        One array per column, plus "_line" (int64 line numbers, 1-based, for error messages).
        Blank lines are skipped; a file with only a header gives zero-length arrays.
    """
    path = Path(path)
    assert len(columns) == len(kinds)
    if not path.is_file():
        raise InputError(f"{path}: file not found", "missing_file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: unreadable ({type(err).__name__})", "bad_csv") from None
    rows = [(n, r) for n, r in enumerate(csv.reader(text.splitlines()), start=1) if any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"{path}: empty file (expected the header {','.join(columns)})", "bad_csv")
    header = [c.strip() for c in rows[0][1]]
    if tuple(header) != columns:
        raise InputError(f"{path}: line {rows[0][0]}: expected the header {','.join(columns)}, got "
                         f"{','.join(header)[:80]}", "bad_csv")
    values: list[list[float | int]] = [[] for _ in columns]
    lines = []
    for line_no, row in rows[1:]:
        if len(row) != len(columns):
            raise InputError(f"{path}: line {line_no}: expected {len(columns)} values "
                             f"({','.join(columns)}), got {len(row)}", "bad_csv")
        for j, (cell, kind) in enumerate(zip(row, kinds)):
            values[j].append(_parse(cell.strip(), kind, path, line_no, columns[j]))
        lines.append(line_no)
    out = {name: np.asarray(col, dtype=np.int64 if kind == "i" else np.float64)
           for name, col, kind in zip(columns, values, kinds)}
    out["_line"] = np.asarray(lines, dtype=np.int64)
    return out


def check_frame_column(table: dict[str, np.ndarray], path: Path, reason: str) -> None:
    """Per-frame tables list frames 0..n-1 in order; the error names the first line that does not."""
    n = len(table["frame"])
    bad = np.flatnonzero(table["frame"] != np.arange(n))
    if bad.size:
        i = bad[0]
        raise InputError(f"{path}: line {table['_line'][i]}: frame: expected {i} (frames 0..{n - 1} in order), "
                         f"got {table['frame'][i]}", reason)


def _parse(cell: str, kind: str, path: Path, line_no: int, column: str) -> float | int:
    try:
        if kind == "i":
            try:
                return int(cell)
            except ValueError:
                x = float(cell)  # accept "3.0", refuse "3.5"
                if not x.is_integer():
                    raise
                return int(x)
        x = float(cell)
    except (ValueError, OverflowError):
        expected = "an integer" if kind == "i" else "a number"
        raise InputError(f"{path}: line {line_no}: {column}: expected {expected}, got {cell[:30]!r}",
                         "bad_csv") from None
    if not math.isfinite(x):
        raise InputError(f"{path}: line {line_no}: {column}: expected a finite number, got {cell[:30]!r}",
                         "bad_csv")
    return x

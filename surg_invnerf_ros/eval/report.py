"""Result tables (DESIGN §4): metric rows and their markdown rendering, shared by `eval`, `demo`
and `bench`.

A row is a flat dict: `method` (and, in a benchmark, `sequence`) plus the floats of
`metrics.compute_metrics`. Units follow the key suffix: `_px`, `_mm` and `_s` print with two
decimals, shares (δ, OA, AJ) with three; `inf` prints as `inf` (a lost point), NaN or a missing key
as `-` (nothing to evaluate).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

from .metrics import STIR_THRESHOLDS_2D_PX, STIR_THRESHOLDS_3D_MM

DEFAULT_COLUMNS = (
    "sequence", "method", "epe_px", "epe_end_px", "delta_avg", "delta_avg_end", "oa", "aj",
    "err3d_mm", "err3d_end_mm", "stir_delta2d", "stir_delta3d", "fail_frac", "time_s", "frame_time_ms",
)


TEXT_COLUMNS = ("sequence", "method", "error")


def metrics_row(name: str, metrics: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """One table row: `{"method": name, **extra, **metrics}` (extra e.g. `sequence=`)."""
    return {"method": name, **extra, **dict(metrics)}


def format_value(key: str, value: Any) -> str:
    """One cell: units by key suffix, `inf` for a failure, `-` for nothing to evaluate."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if key.endswith(("_px", "_mm", "_ms", "_s", "_m")):
            return f"{value:.2f}"
        return f"{value:.3f}"
    return str(value).replace("|", "\\|")


def format_table(rows: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None) -> str:
    """A markdown table of `rows`.

    Args:
        rows: metric rows (see `metrics_row`).
        columns: keys to show, in order; None shows those of `DEFAULT_COLUMNS` that any row has.

    Returns:
        The table, one line per row, ending with a newline; empty string for no rows.
    """
    if not rows:
        return ""
    if columns is None:
        columns = [c for c in DEFAULT_COLUMNS if any(c in r for r in rows)]
    columns = list(columns)
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if c in TEXT_COLUMNS else "---:" for c in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(format_value(c, r.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def mean_rows(rows: Sequence[Mapping[str, Any]], key: str = "method",
              label: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per-`key` means of every numeric field, in first-seen order.

    A NaN (nothing evaluated) is skipped; an `inf` (a failure) stays and makes the mean `inf`.
    `label` adds fixed fields, e.g. `{"sequence": "mean"}`.
    """
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r.get(key), []).append(r)
    out = []
    for name, group in groups.items():
        row: dict[str, Any] = {key: name, **dict(label or {})}
        numeric = list(dict.fromkeys(k for g in group for k, v in g.items() if k != key and k not in row
                                     and isinstance(v, (int, float)) and not isinstance(v, bool)))
        for k in numeric:
            vals = [float(g[k]) for g in group if isinstance(g.get(k), (int, float)) and not math.isnan(g[k])]
            row[k] = sum(vals) / len(vals) if vals else float("nan")
        out.append(row)
    return out


def json_safe(obj: Any) -> Any:
    """Strict-JSON copy of nested dicts/lists: NaN → null, ±inf → "inf"/"-inf", numpy → Python."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
    return obj


def format_stir_scores(scores: Mapping[str, Any], title: str = "") -> str:
    """Markdown: STIR accuracy per threshold and δ, model and zero-motion control, 2D and 3D where present
    (the keys of `stir.pooled_stir_scores`)."""
    lines = [title, ""] if title else []
    for dim, unit, thresholds in (("2d", "px", STIR_THRESHOLDS_2D_PX), ("3d", "mm", STIR_THRESHOLDS_3D_MM)):
        if f"stir_delta{dim}" not in scores or f"stir_delta{dim}_{thresholds[0]}" not in scores:
            continue
        points = scores.get(f"stir_points_{dim}")
        lines += [f"STIR {dim.upper()} ({int(points) if points is not None else '?'} points, nearest end label):", "",
                  "| | " + " | ".join(f"≤ {t} {unit}" for t in thresholds) + " | δ |",
                  "|---|" + "---:|" * (len(thresholds) + 1)]
        for name, prefix in (("model", f"stir_delta{dim}"), ("zero motion", f"stir_control_delta{dim}")):
            if prefix not in scores:
                continue
            cells = [format_value("delta", scores.get(f"{prefix}_{t}")) for t in thresholds]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {format_value('delta', scores[prefix])} |")
        lines.append("")
    return "\n".join(lines)

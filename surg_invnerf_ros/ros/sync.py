"""Stereo + camera_info synchronisation keyed by stamp_ns (DESIGN §5, `sync.*` parameters).

Plain code, no DDS: the node pushes (slot, stamp_ns, message, arrival time) and gets back complete
sets. The four slots (left image, right image, left and right camera_info) are bounded queues. The
oldest left image is the pivot: it is emitted with the nearest partner of every other slot once all
lie within `slop_s` (exact sync is slop 0). A pivot is dropped, with its reason, when a partner
can no longer arrive (a newer one is already queued past the slop) or after `timeout_s`.

Every message that leaves without being emitted is counted under one reason key, which the node
reports in /diagnostics: `duplicate_stamp`, `out_of_order_stamp`, `queue_overflow`,
`missing_right_image`, `missing_left_camera_info`, `missing_right_camera_info`, `unmatched_right_image`,
`unmatched_camera_info`, `time_jump`.

A stamp more than `TIME_JUMP_BACK_NS` behind the newest of its slot is not an out-of-order message but
time jumping backwards (a looping bag, a restarted source, or a stamp far in the future before it):
that slot starts again from it (what it still held is dropped as `time_jump`), so one bad stamp
cannot block a topic for good.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..config import SyncConfig

LEFT, RIGHT, INFO_L, INFO_R = "left", "right", "info_left", "info_right"
SLOTS = (LEFT, RIGHT, INFO_L, INFO_R)
_MISSING = {RIGHT: "missing_right_image", INFO_L: "missing_left_camera_info", INFO_R: "missing_right_camera_info"}
TIME_JUMP_BACK_NS = 1_000_000_000  # a stamp further behind the newest of its slot: time jumped backwards
_UNMATCHED = {LEFT: "unmatched_left_image", RIGHT: "unmatched_right_image", INFO_L: "unmatched_camera_info",
              INFO_R: "unmatched_camera_info"}


class _Item(NamedTuple):
    stamp_ns: int
    msg: Any
    arrival_ns: int


@dataclass(frozen=True)
class StereoSet:
    """One synchronised set. `stamp_ns` is the left image's stamp; `skew_ns` the largest |Δstamp|."""

    stamp_ns: int
    left: Any
    right: Any
    info_left: Any
    info_right: Any
    skew_ns: int


class StereoSync:
    """Bounded, reason-counting stereo synchroniser (exact or approximate)."""

    def __init__(self, cfg: SyncConfig) -> None:
        self.slop_ns = int(round(cfg.slop_s * 1e9)) if cfg.approximate else 0
        self.timeout_ns = int(round(cfg.timeout_s * 1e9))
        self.queue_size = cfg.queue_size
        self._queues: dict[str, deque[_Item]] = {s: deque() for s in SLOTS}
        self._last_stamp: dict[str, int] = {}
        self.drops: Counter[str] = Counter()

    # -- public ---------------------------------------------------------------------------

    def push(self, slot: str, stamp_ns: int, msg: Any, now_ns: int) -> list[StereoSet]:
        """Add one message; return the sets it completed (oldest first). Never blocks."""
        if slot not in self._queues:
            raise ValueError(f"sync slot: unknown {slot!r} (expected one of {', '.join(SLOTS)})")
        last = self._last_stamp.get(slot)
        if last is not None and last - stamp_ns > TIME_JUMP_BACK_NS:  # time jumped back: the slot starts again
            if self._queues[slot]:
                self.drops["time_jump"] += len(self._queues[slot])
                self._queues[slot].clear()
            last = None
        if last is not None and stamp_ns <= last:
            self.drops["duplicate_stamp" if stamp_ns == last else "out_of_order_stamp"] += 1
            return self._match(now_ns)
        self._last_stamp[slot] = stamp_ns
        q = self._queues[slot]
        q.append(_Item(stamp_ns, msg, now_ns))
        if len(q) > self.queue_size:
            q.popleft()
            self.drops["queue_overflow"] += 1
        return self._match(now_ns)

    def flush(self, now_ns: int) -> list[StereoSet]:
        """Apply timeouts without new input (call from a timer)."""
        return self._match(now_ns)

    def depths(self) -> dict[str, int]:
        """Queue depth per slot, for /diagnostics."""
        return {s: len(q) for s, q in self._queues.items()}

    def reset(self) -> None:
        """Forget queued messages and the last stamps (time jumped backwards, e.g. a bag loop)."""
        for q in self._queues.values():
            q.clear()
        self._last_stamp.clear()

    # -- matching -------------------------------------------------------------------------

    def _nearest(self, slot: str, stamp_ns: int) -> tuple[int, _Item] | None:
        q = self._queues[slot]
        if not q:
            return None
        idx = min(range(len(q)), key=lambda i: abs(q[i].stamp_ns - stamp_ns))
        return idx, q[idx]

    def _match(self, now_ns: int) -> list[StereoSet]:
        out: list[StereoSet] = []
        while self._queues[LEFT]:
            pivot = self._queues[LEFT][0]
            partners: dict[str, tuple[int, _Item]] = {}
            waiting: list[str] = []
            hopeless: list[str] = []
            for slot in (RIGHT, INFO_L, INFO_R):
                near = self._nearest(slot, pivot.stamp_ns)
                if near is not None and abs(near[1].stamp_ns - pivot.stamp_ns) <= self.slop_ns:
                    partners[slot] = near
                    continue
                newest = self._queues[slot][-1].stamp_ns if self._queues[slot] else None
                # Stamps arrive in order per slot: once one lies past the slop, no partner can come.
                (hopeless if newest is not None and newest > pivot.stamp_ns + self.slop_ns else waiting).append(slot)
            if not waiting and not hopeless:
                out.append(self._emit(pivot, partners))
                continue
            timed_out = now_ns - pivot.arrival_ns > self.timeout_ns
            if hopeless or timed_out:
                self._queues[LEFT].popleft()
                self.drops[_MISSING[(hopeless or waiting)[0]]] += 1
                self._prune(pivot.stamp_ns)
                continue
            break
        return out

    def _prune(self, floor_ns: int) -> None:
        """Drop partners too old for any later pivot (later pivots are newer than floor_ns)."""
        for slot in (RIGHT, INFO_L, INFO_R):
            q = self._queues[slot]
            while q and q[0].stamp_ns < floor_ns - self.slop_ns:
                q.popleft()
                self.drops[_UNMATCHED[slot]] += 1

    def _emit(self, pivot: _Item, partners: dict[str, tuple[int, _Item]]) -> StereoSet:
        self._queues[LEFT].popleft()
        for slot, (idx, _item) in partners.items():
            q = self._queues[slot]
            # Everything older than the partner can no longer pair with a later pivot.
            for _ in range(idx):
                q.popleft()
                self.drops[_UNMATCHED[slot]] += 1
            q.popleft()
        self._prune(pivot.stamp_ns)
        skew = max(abs(it.stamp_ns - pivot.stamp_ns) for _, it in partners.values())
        return StereoSet(pivot.stamp_ns, pivot.msg, partners[RIGHT][1].msg, partners[INFO_L][1].msg,
                         partners[INFO_R][1].msg, skew)

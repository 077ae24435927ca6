"""ros/sync.py: stereo + camera_info pairing by stamp, bounded queues, drops by reason (no DDS)."""

import pytest

from surg_invnerf_ros.config import SyncConfig
from surg_invnerf_ros.ros.sync import INFO_L, INFO_R, LEFT, RIGHT, StereoSync

MS = 1_000_000


def push_set(sync, stamp, now=0, skip=(), jitter=None):
    """Push the four messages of one set (msg = (slot, stamp)); return the completed sets."""
    out = []
    for slot in (INFO_L, INFO_R, RIGHT, LEFT):
        if slot in skip:
            continue
        s = stamp + (jitter or {}).get(slot, 0)
        out += sync.push(slot, s, (slot, s), now)
    return out


class TestExact:
    def test_complete_sets_in_any_arrival_order(self):
        sync = StereoSync(SyncConfig(approximate=False))
        assert sync.push(LEFT, 10, "L", 0) == []
        assert sync.push(RIGHT, 10, "R", 0) == []
        assert sync.push(INFO_R, 10, "IR", 0) == []
        (s,) = sync.push(INFO_L, 10, "IL", 0)
        assert (s.stamp_ns, s.left, s.right, s.info_left, s.info_right, s.skew_ns) == (10, "L", "R", "IL", "IR", 0)
        assert sync.depths() == {LEFT: 0, RIGHT: 0, INFO_L: 0, INFO_R: 0}
        assert not sync.drops

    def test_any_stamp_difference_fails_exact(self):
        sync = StereoSync(SyncConfig(approximate=False))
        assert push_set(sync, 10 * MS, jitter={RIGHT: 1}) == []
        # the next right image (newer than the pivot) proves no partner will come
        push_set(sync, 43 * MS)
        assert sync.drops["missing_right_image"] == 1


class TestApproximate:
    def test_within_slop_pairs_and_reports_skew(self):
        sync = StereoSync(SyncConfig(approximate=True, slop_s=0.005))
        (s,) = push_set(sync, 100 * MS, jitter={RIGHT: 3 * MS, INFO_L: -1 * MS})
        assert s.skew_ns == 3 * MS and s.right == (RIGHT, 103 * MS)

    def test_nearest_partner_is_chosen_and_older_ones_counted(self):
        sync = StereoSync(SyncConfig(approximate=True, slop_s=0.005, timeout_s=10))
        sync.push(RIGHT, 90 * MS, "r90", 0)    # too old for the pivot at 100 ms
        sync.push(RIGHT, 99 * MS, "r99", 0)
        sync.push(RIGHT, 104 * MS, "r104", 0)
        sync.push(INFO_L, 100 * MS, "il", 0)
        sync.push(INFO_R, 100 * MS, "ir", 0)
        (s,) = sync.push(LEFT, 100 * MS, "l", 0)
        assert s.right == "r99"
        assert sync.drops["unmatched_right_image"] == 1   # r90
        assert sync.depths()[RIGHT] == 1                   # r104 waits for the next left image

    def test_missing_right_image_times_out(self):
        sync = StereoSync(SyncConfig(approximate=True, slop_s=0.005, timeout_s=0.5))
        assert push_set(sync, 100 * MS, now=0, skip=(RIGHT,)) == []
        assert sync.flush(400 * MS) == [] and not sync.drops
        assert sync.flush(600 * MS) == []
        assert sync.drops["missing_right_image"] == 1
        assert sync.depths()[LEFT] == 0

    def test_missing_right_image_detected_by_a_newer_one(self):
        sync = StereoSync(SyncConfig(approximate=True, slop_s=0.005, timeout_s=60))
        push_set(sync, 100 * MS, skip=(RIGHT,))
        out = push_set(sync, 133 * MS)
        assert [s.stamp_ns for s in out] == [133 * MS]
        assert sync.drops["missing_right_image"] == 1
        assert sync.drops["unmatched_camera_info"] == 2  # the 100 ms infos

    def test_missing_camera_info(self):
        sync = StereoSync(SyncConfig(timeout_s=0.1))
        push_set(sync, 100 * MS, skip=(INFO_L,))
        sync.flush(200 * MS)
        assert sync.drops["missing_left_camera_info"] == 1


class TestOrderAndBounds:
    def test_duplicate_and_out_of_order_stamps(self):
        sync = StereoSync(SyncConfig())
        assert len(push_set(sync, 100 * MS)) == 1
        assert push_set(sync, 100 * MS) == []        # all four duplicated
        assert sync.drops["duplicate_stamp"] == 4
        assert push_set(sync, 50 * MS) == []         # older than what was seen
        assert sync.drops["out_of_order_stamp"] == 4
        assert len(push_set(sync, 133 * MS)) == 1    # and good input still pairs

    def test_queues_are_bounded(self):
        sync = StereoSync(SyncConfig(queue_size=3, timeout_s=60))
        for k in range(10):
            sync.push(LEFT, k * 33 * MS, k, 0)
        assert sync.depths()[LEFT] == 3
        assert sync.drops["queue_overflow"] == 7

    def test_reset_forgets_last_stamps(self):
        sync = StereoSync(SyncConfig())
        push_set(sync, 100 * MS)
        sync.reset()
        assert len(push_set(sync, 10 * MS)) == 1  # e.g. a bag that loops

    def test_unknown_slot(self):
        with pytest.raises(ValueError, match="unknown 'depth'"):
            StereoSync(SyncConfig()).push("depth", 1, None, 0)

    def test_burst_at_twice_the_rate_all_pair(self):
        sync = StereoSync(SyncConfig(queue_size=10))
        out = []
        for k in range(20):
            out += push_set(sync, k * 16 * MS, now=k * 16 * MS)
        assert len(out) == 20 and not sync.drops

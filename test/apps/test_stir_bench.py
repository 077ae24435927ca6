"""STIR end to end on synthetic STIR-format clips (mp4 per eye, calib.json, label JSONs in px and mm):
import → track → eval against the STIRMetrics oracle, stir-bench local vs Ray, resume, a failing clip."""

import json
import shutil

import numpy as np
import pytest

from surg_invnerf_ros.apps.cli import main
from surg_invnerf_ros.apps.stir_bench import discover_clips, run_stir_bench, track_path
from surg_invnerf_ros.config import StirBenchConfig, SynthConfig, load_fit_and_frontend
from surg_invnerf_ros.io.trackfile import read_tracks
from surg_invnerf_ros.synth.generate import generate_sequence
from surg_invnerf_ros.synth.stir_clip import write_stir_clip

from ..eval.test_stir import T2D, T3D, oracle


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three synthetic clips (different scenes and lengths) in STIR's layout, with their label JSONs."""
    root = tmp_path_factory.mktemp("stir")
    clips_dir = root / "clips"
    keys = []
    for k in range(3):
        seq = generate_sequence(root / f"synth{k}", SynthConfig(width=192, height=144, frames=10 + 2 * k,
                                                                num_queries=12, seed=k, difficulty="hard",
                                                                camera_motion=True))
        keys.append(write_stir_clip(seq, clips_dir, f"clip{k}"))
    return clips_dir, keys


def labels(clips_dir, name):
    return json.loads((clips_dir / name).read_text())


def test_synthetic_clip_has_stir_layout(clips):
    clips_dir, keys = clips
    assert [c.key for c in discover_clips(clips_dir)] == keys == [f"clip{k}/left/seq00" for k in range(3)]
    calib = json.loads((clips_dir / "clip0" / "calib.json").read_text())
    assert {"leftcameramat", "rightcameramat", "leftdistortioncoeffs", "rightdistortioncoeffs", "translation",
            "rotation"} <= set(calib)
    start, end3 = labels(clips_dir, "start.json"), labels(clips_dir, "end_3d.json")
    assert set(start) == set(keys) and np.asarray(end3[keys[0]]).shape[1] == 3
    assert 30 < np.median(np.asarray(end3[keys[0]])[:, 2]) < 150  # millimetres at a ~75 mm working distance


def test_import_track_eval_matches_the_stirmetrics_oracle(clips, tmp_path, capsys):
    clips_dir, keys = clips
    seq, pred, pred_json = tmp_path / "seq", tmp_path / "lk.npz", tmp_path / "lk_stir.json"
    assert main(["stir-import", str(clips_dir / "clip1"), str(seq), "--start-json", str(clips_dir / "start.json"),
                 "--end-json", str(clips_dir / "end.json"), "--end-json-3d", str(clips_dir / "end_3d.json"),
                 "--start-json-3d", str(clips_dir / "start_3d.json"), "--clip", keys[1]]) == 0
    assert main(["track", str(seq), "--method", "lk", "--out", str(pred), "--stir-json", str(pred_json)]) == 0
    capsys.readouterr()
    assert main(["eval", str(seq), "--pred", str(pred), "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)
    # the official formulas on the prediction JSON the tracker exported and the label JSONs as given
    acc, avg, cacc, cavg = oracle(json.loads(pred_json.read_text()), labels(clips_dir, "start.json"),
                                  labels(clips_dir, "end.json"), T2D)
    assert abs(ours["stir_delta2d"] - avg) <= 1e-9 and abs(ours["stir_control_delta2d"] - cavg) <= 1e-9
    for t, a in zip(T2D, acc):
        assert abs(ours[f"stir_delta2d_{t}"] - a) <= 1e-9
    tracks = read_tracks(pred)
    pred3 = {keys[1]: (tracks.xyz[-1].astype(np.float64) * 1000.0).tolist()}
    acc3, avg3, _, cavg3 = oracle(pred3, labels(clips_dir, "start_3d.json"), labels(clips_dir, "end_3d.json"), T3D)
    assert abs(ours["stir_delta3d"] - avg3) <= 1e-9 and abs(ours["stir_control_delta3d"] - cavg3) <= 1e-9
    assert ours["stir_points_2d"] == 12
    assert cavg < 0.95, "the scene must move beyond the thresholds for the comparison to mean something"
    assert avg > cavg, "LK should beat the zero-motion control on a moving scene"
    # the table form names the model and the control
    assert main(["eval", str(seq), "--pred", str(pred)]) == 0
    text = capsys.readouterr().out
    assert "zero motion" in text and "≤ 64 px" in text and "≤ 32 mm" in text


def test_stir_bench_local_and_ray_agree_and_pool_as_stirmetrics(clips, tmp_path):
    pytest.importorskip("ray")
    clips_dir, keys = clips
    local = run_stir_bench(clips_dir, tmp_path / "local", StirBenchConfig(methods=("lk", "zero")))
    ray = run_stir_bench(clips_dir, tmp_path / "ray", StirBenchConfig(methods=("lk", "zero"), backend="ray",
                                                                      ray_num_cpus=2))
    assert not local["failures"] and not ray["failures"]
    assert local["pooled"] == ray["pooled"]
    for m in ("lk", "zero"):
        sub = json.loads((tmp_path / "local" / f"submission_{m}_2d.json").read_text())
        assert set(sub) == set(keys)
        acc, avg, _, cavg = oracle(sub, labels(clips_dir, "start.json"), labels(clips_dir, "end.json"), T2D)
        pooled = local["pooled"][m]
        assert abs(pooled["stir_delta2d"] - avg) <= 1e-9 and abs(pooled["stir_control_delta2d"] - cavg) <= 1e-9
        assert pooled["clips"] == 3
    # zero motion predicts the start labels (through rectification and back): the control's score
    zero = local["pooled"]["zero"]
    assert abs(zero["stir_delta2d"] - zero["stir_control_delta2d"]) <= 1.0 / zero["stir_points_2d"]
    for name in ("stir_bench.md", "stir_bench.png", "stir_bench.json", "submission_lk_3d.json"):
        assert (tmp_path / "local" / name).is_file(), name
    assert "pooled over clips" in (tmp_path / "local" / "stir_bench.md").read_text()


def test_a_stopped_run_resumes_with_the_missing_clips_only(clips, tmp_path):
    clips_dir, keys = clips
    out = tmp_path / "out"
    cfg = StirBenchConfig(methods=("lk",))

    def stop_after_first(result):
        raise KeyboardInterrupt  # Ctrl-C once the first clip is done

    with pytest.raises(KeyboardInterrupt):
        run_stir_bench(clips_dir, out, cfg, progress=stop_after_first)
    clips_list = discover_clips(clips_dir)
    first = track_path(out, clips_list[0], "lk")
    assert first.is_file() and not track_path(out, clips_list[1], "lk").exists()
    mtime = first.stat().st_mtime_ns
    ran = []
    result = run_stir_bench(clips_dir, out, cfg, progress=lambda r: ran.append(r.name))
    assert ran == keys[1:], "only the clips without results run again"
    assert first.stat().st_mtime_ns == mtime
    assert result["pooled"]["lk"]["clips"] == 3


def test_a_failing_clip_is_reported_and_the_others_scored(clips, tmp_path, capsys):
    clips_dir, keys = clips
    broken = tmp_path / "clips"
    shutil.copytree(clips_dir, broken)
    (broken / "clip2" / "left" / "seq00" / "frames" / "video.mp4").write_bytes(b"not a video")
    code = main(["stir-bench", str(broken), "--out", str(tmp_path / "out"), "--methods", "zero"])
    err = capsys.readouterr().err
    assert code == 1 and f"{keys[2]}: failed" in err and "unreadable video" in err
    result = json.loads((tmp_path / "out" / "stir_bench.json").read_text())
    assert list(result["failures"]) == [keys[2]] and result["pooled"]["zero"]["clips"] == 2


def test_killed_with_sigkill_half_way_then_rerun_finishes_the_missing_clips(clips, tmp_path):
    """The real thing: `stir-bench` as a process, SIGKILL once a clip is done, then run again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    clips_dir, keys = clips
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "surg_invnerf_ros.apps.cli", "stir-bench", str(clips_dir), "--out", str(out),
           "--methods", "invnerf", "--time-budget-s", "3", "--set", "max_steps=40"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    clips_list = discover_clips(clips_dir)
    paths = [track_path(out, c, "invnerf") for c in clips_list]
    t0 = time.monotonic()
    while not paths[0].is_file() and proc.poll() is None and time.monotonic() - t0 < 240:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    done_before = [p.is_file() for p in paths]
    assert done_before[0] and not all(done_before), "the kill must land between the first and the last clip"
    mtimes = {p: p.stat().st_mtime_ns for p, d in zip(paths, done_before) if d}
    ran = []
    fit_cfg, frontend_cfg = load_fit_and_frontend(None, ["time_budget_s=3", "max_steps=40"])  # as the command line
    result = run_stir_bench(clips_dir, out, StirBenchConfig(methods=("invnerf",)), fit_cfg, frontend_cfg,
                            progress=lambda r: ran.append(r.name))
    assert ran == [k for k, d in zip(keys, done_before) if not d]
    assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items()), "finished clips are not fitted again"
    assert not result["failures"] and result["pooled"]["invnerf"]["clips"] == 3

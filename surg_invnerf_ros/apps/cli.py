"""`surg-invnerf`: the offline command line (synth, track, eval, recon, bench, record, demo).

This is the only code that sets an exit code. A user mistake (bad file, field or value) prints one
line on stderr naming it and exits 2, without a traceback. Long work shows a tqdm bar. Options that
set a config field take their default, help and choices from that field's metadata.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, get_args
from typing import Sequence as Seq

from tqdm import tqdm

from ..config import (
    FitConfig,
    FrontendConfig,
    KinematicsConfig,
    SoakConfig,
    StirBenchConfig,
    SynthConfig,
    TapVidConfig,
    field_meta,
    load_fit_and_frontend,
)
from ..config.bench import BenchPreset
from ..errors import ConfigError, InputError
from ..eval.evaluate import evaluate_files
from ..eval.plots import contact_sheet
from ..eval.report import format_stir_scores, format_table, json_safe, metrics_row
from ..eval.stir import read_stir_end
from ..io.kinematics import read_hand_eye
from ..io.scared import scared_to_sequence
from ..io.sequence import read_sequence
from ..io.stir import GT_END_FILE, stir_clip_to_sequence
from ..io.trackfile import export_csv, export_stir_json, write_tracks
from ..ros.kinematics import camera_poses_at
from ..structs import Sequence
from ..synth.generate import generate_sequence
from ..track import METHODS, fit_invnerf, reconstruct, track_sequence
from .demo import run_demo
from .progress import fit_bar
from .suite import SuiteOptions, run_full_bench

log = logging.getLogger(__name__)

EXIT_USER_ERROR = 2


class UsageError(Exception):
    """A bad command-line argument; printed as one line, exit 2."""


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size: expected WxH such as 256x192, got {text!r}") from None
    return w, h


def config_option(parser: argparse.ArgumentParser, flag: str, cls: type, name: str, *,
                  default: Any = argparse.SUPPRESS, **kwargs: Any) -> None:
    """Add `flag` for the field `cls.name`: type, help and choices come from the field's metadata.

    With the default `default`, an option left out keeps the config's own default (shown in the
    help); pass `default=None` where an option left out must leave a loaded config alone."""
    meta = field_meta(cls, name)
    shown = meta.default if default is argparse.SUPPRESS else None
    help_text = meta.doc.rstrip(".") + (f" (default {shown})" if shown is not None else "")
    if meta.type is bool:
        parser.add_argument(flag, action="store_true", default=meta.default if shown is not None else None,
                            help=help_text, **kwargs)
        return
    if meta.choices:
        kwargs.setdefault("choices", list(meta.choices))
    kwargs.setdefault("type", meta.type if meta.type in (int, float) else str)
    parser.add_argument(flag, default=meta.default if shown is not None else default, help=help_text, **kwargs)


@contextmanager
def _bar(desc: str, total: int | None = None, unit: str = "it") -> Iterator[Callable[[int], object]]:
    """A tqdm bar on stderr; yields `update(n)`."""
    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False, delay=0.5) as bar:
        yield bar.update


# ------------------------------------------------------------------------------------------------
# Subcommands
# ------------------------------------------------------------------------------------------------


def cmd_synth(args: argparse.Namespace) -> int:
    w, h = args.size
    cfg = SynthConfig(frames=args.frames, width=w, height=h, seed=args.seed, instrument=args.instrument,
                      camera_motion=args.camera_motion, difficulty=args.difficulty, num_queries=args.queries)
    with _bar("synth", total=cfg.frames, unit="frame") as update:
        out = generate_sequence(args.out, cfg, progress=update)
    print(f"wrote {out} ({cfg.frames} frames, {w}x{h}, ground truth in {Path(out) / 'gt'})")
    return 0


def run_overrides(args: argparse.Namespace) -> list[str]:
    """The dotted config overrides that the command line's `--set` and dedicated flags stand for."""
    overrides = list(getattr(args, "set", None) or [])
    if getattr(args, "device", None):
        overrides.append(f"device={args.device}")
    if getattr(args, "time_budget_s", None) is not None:
        overrides += [f"time_budget_s={args.time_budget_s}", "time_budget_per_frame_s=0"]  # exactly this budget
    if getattr(args, "seed", None) is not None:
        overrides.append(f"seed={args.seed}")
    if getattr(args, "kinematics", None) is not None:
        overrides.append(f"use_kinematics={'true' if args.kinematics == 'on' else 'false'}")
    if getattr(args, "pose_refine", False):
        overrides.append("pose_refine=true")
    return overrides


def load_run_configs(args: argparse.Namespace) -> tuple[FitConfig, FrontendConfig]:
    """(FitConfig, FrontendConfig) from --config (its `frontend:` section feeds the front end), the
    --set overrides (`frontend.*` ones too) and the dedicated flags."""
    return load_fit_and_frontend(args.config, run_overrides(args))


def apply_kinematics_options(seq: Sequence, hand_eye: Path | None, offset_s: float) -> Sequence:
    """Read the sequence's poses as ECM poses and give each image its camera pose through the node's
    kinematics rules (`ros.kinematics.camera_poses_at`): hand-eye `T_ecm_cam` and clock offset."""
    if hand_eye is None and not offset_s:
        return seq
    flag = "--hand-eye" if hand_eye is not None else "--kinematics-offset-s"
    if seq.T_world_cam is None:
        raise UsageError(f"{flag}: {seq.name} has no kinematics.csv to apply it to")
    T_ecm_cam = read_hand_eye(hand_eye) if hand_eye is not None else None
    kin_cfg = KinematicsConfig(time_offset_s=offset_s)
    if T_ecm_cam is not None:
        kin_cfg = replace(kin_cfg, T_ecm_cam=tuple(T_ecm_cam.ravel().tolist()))
    T_world_cam, counts = camera_poses_at(seq.stamps_ns, seq.stamps_ns, seq.T_world_cam, kin_cfg)
    if sum(counts.values()):
        log.warning("kinematics: %s image(s) had no pose within %.3f s of stamp + offset and took the "
                    "nearest frame's", sum(counts.values()), kin_cfg.max_age_s)
    return replace(seq, T_world_cam=T_world_cam)


def cmd_track(args: argparse.Namespace) -> int:
    if args.method not in METHODS:
        raise UsageError(f"--method: unknown method {args.method!r} (expected one of {', '.join(METHODS)})")
    fit_cfg, frontend_cfg = load_run_configs(args)
    with _bar("read", unit="frame") as update:  # every method decodes each frame when it needs it
        seq = read_sequence(args.seq, progress=update, lazy=True)
    seq = apply_kinematics_options(seq, args.hand_eye, args.kinematics_offset_s)
    with fit_bar(f"track[{args.method}]") as update:
        tracks = track_sequence(seq, args.method, fit_cfg=fit_cfg, frontend_cfg=frontend_cfg, progress=update)
    rect_tracks = tracks  # the overlay draws them on the rectified images they were made on
    if seq.rectify is not None:
        tracks = seq.rectify.rect_to_raw_tracks(tracks)
    out = write_tracks(args.out, tracks)
    print(f"wrote {out} ({tracks.num_points} points x {tracks.num_frames} frames, method {args.method})")
    if args.overlay:
        print(f"wrote {contact_sheet(seq, {args.method: rect_tracks}, None, args.overlay)}")
    if args.csv:
        print(f"wrote {export_csv(tracks, args.csv)}")
    if args.stir_json:  # keyed as the clip's STIR labels are, when it was imported with them
        labels = Path(args.seq) / GT_END_FILE
        clip = read_stir_end(labels).clip if labels.is_file() else seq.name
        print(f"wrote {export_stir_json(tracks, args.stir_json, clip=clip)}")
    return 0


def tapvid_config(args: argparse.Namespace) -> TapVidConfig:
    """The TAP-Vid options of `eval` (`--tapvid-size`, `--never-visible`, ...) as a TapVidConfig."""
    return TapVidConfig(**{f.name: getattr(args, f"tapvid_{f.name}") for f in fields(TapVidConfig)
                           if hasattr(args, f"tapvid_{f.name}")})


def cmd_eval(args: argparse.Namespace) -> int:
    metrics = evaluate_files(args.seq, args.pred, tapvid_config(args))
    if args.json:
        print(json.dumps(json_safe(metrics), sort_keys=True))
        return 0
    if "num_points" in metrics:  # dense ground truth
        print(format_table([metrics_row(Path(args.pred).stem, metrics)]))
    if "stir_points_2d" in metrics:  # STIR labels
        print(format_stir_scores(metrics))
    return 0


def cmd_recon(args: argparse.Namespace) -> int:
    fit_cfg, frontend_cfg = load_run_configs(args)
    seq = read_sequence(args.seq)
    frames = _parse_frames(args.frames, seq.num_frames)
    with fit_bar("fit") as update:
        result = fit_invnerf(seq, fit_cfg, frontend_cfg, progress=update)
    paths = reconstruct(result, seq, frames, args.out)
    for p in paths:
        print(f"wrote {p}")
    return 0


def _parse_frames(text: str | None, num_frames: int) -> list[int]:
    if not text:
        return sorted({0, num_frames // 2, num_frames - 1})
    try:
        frames = [int(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"--frames: expected comma-separated frame indices, got {text!r}") from None
    bad = [f for f in frames if not 0 <= f < num_frames]
    if bad:
        raise UsageError(f"--frames: frame {bad[0]} does not exist (sequence has {num_frames} frames)")
    return frames


def cmd_bench(args: argparse.Namespace) -> int:
    fit_cfg, frontend_cfg = load_run_configs(args)
    width, height = args.size or (0, 0)
    opts = SuiteOptions(preset=args.preset, methods=tuple(args.methods or ()), seeds=tuple(args.seeds or ()),
                        width=width, height=height, frames=args.frames or 0, accuracy=not args.no_accuracy,
                        kinematics=not args.no_kinematics, ros=not args.no_ros, speed=not args.no_speed,
                        docs_dir=args.docs)
    run_full_bench(args.out, opts, fit_cfg, frontend_cfg)
    return 0


def cmd_soak(args: argparse.Namespace) -> int:
    from .soak import run_soak

    cfg = SoakConfig(**{f.name: getattr(args, f.name) for f in fields(SoakConfig) if hasattr(args, f.name)})
    with _bar("soak", total=int(cfg.duration_s), unit="s") as bar:
        done = [0]

        def progress(elapsed_s: float, total_s: float) -> None:
            bar(int(elapsed_s) - done[0])
            done[0] = int(elapsed_s)

        result = run_soak(cfg, args.out, progress=progress)
    print((Path(args.out) / "soak.md").read_text())
    if args.docs is not None:
        args.docs.mkdir(parents=True, exist_ok=True)
        for name in ("soak.md", "soak.png"):
            shutil.copyfile(Path(args.out) / name, args.docs / name)
        print(f"copied soak.md and soak.png to {args.docs}")
    if not result["verdict"]["passed"]:
        failed = [k for k, c in result["verdict"]["checks"].items() if not c["ok"]]
        print(f"soak: over the limit: {', '.join(failed)} (see {Path(args.out) / 'soak.md'})", file=sys.stderr)
        return 1
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from ..ros.bag_nodes import record  # optional: needs the ROS 2 wheels

    out = record(args.topics, args.out, duration_s=args.duration_s, to=args.to, storage=args.storage)
    print(f"wrote {out}")
    return 0


def cmd_stir_bench(args: argparse.Namespace) -> int:
    from .stir_bench import run_stir_bench

    fit_cfg, frontend_cfg = load_run_configs(args)
    values = {f.name: getattr(args, f"sb_{f.name}") for f in fields(StirBenchConfig) if hasattr(args, f"sb_{f.name}")}
    if "methods" in values:
        values["methods"] = tuple(values["methods"])
    cfg = StirBenchConfig(**values)
    with _bar("stir-bench", unit="clip") as update:
        def progress(res: Any) -> None:
            update(1)
            if not res.ok:
                print(f"stir-bench: {res.name}: failed: {res.error}", file=sys.stderr)

        result = run_stir_bench(args.clips_dir, args.out, cfg, fit_cfg, frontend_cfg, progress=progress)
    print((Path(args.out) / "stir_bench.md").read_text())
    return 1 if result["failures"] else 0


def cmd_stir_import(args: argparse.Namespace) -> int:
    with _bar("stir-import", unit="frame") as update:
        out = stir_clip_to_sequence(args.clip_dir, args.out, max_frames=args.max_frames, progress=update,
                                    start_json=args.start_json, end_json=args.end_json,
                                    end_json_3d=args.end_json_3d, start_json_3d=args.start_json_3d, clip=args.clip,
                                    seq=args.seq)
    print(f"wrote {out}")
    return 0


def cmd_scared_import(args: argparse.Namespace) -> int:
    with _bar("scared-import", unit="frame") as update:
        out = scared_to_sequence(args.data_dir, args.out, max_frames=args.max_frames, progress=update)
    print(f"wrote {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    fit_cfg, frontend_cfg = load_run_configs(args)
    return run_demo(args.out, fit_cfg, frontend_cfg, offline=args.offline)


# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="surg-invnerf",
        description="Surg-InvNeRF tissue tracking for stereo endoscopy: synthetic data, tracking, evaluation.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate a synthetic stereo endoscopy sequence with ground truth")
    s.add_argument("out", type=Path, help="output sequence folder")
    config_option(s, "--frames", SynthConfig, "frames")
    defaults = SynthConfig()
    s.add_argument("--size", type=_parse_size, default=(defaults.width, defaults.height),
                   help=f"image size WxH in pixels (default {defaults.width}x{defaults.height})")
    config_option(s, "--seed", SynthConfig, "seed")
    config_option(s, "--queries", SynthConfig, "num_queries", dest="queries")
    config_option(s, "--instrument", SynthConfig, "instrument")
    config_option(s, "--camera-motion", SynthConfig, "camera_motion")
    config_option(s, "--difficulty", SynthConfig, "difficulty")
    s.set_defaults(func=cmd_synth)

    def fit_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path, help="FitConfig YAML (see config/fit.yaml)")
        config_option(sp, "--device", FitConfig, "device", default=None)
        config_option(sp, "--time-budget-s", FitConfig, "time_budget_s", default=None, metavar="S")
        config_option(sp, "--seed", FitConfig, "seed", default=None)
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, FitConfig "
            "or frontend.* (repeatable)")

    t = sub.add_parser("track", help="track the queries of a sequence folder")
    t.add_argument("seq", type=Path, help="sequence folder (DESIGN §2.1)")
    t.add_argument("--out", type=Path, required=True, help="output track file (.npz)")
    t.add_argument("--method", default=METHODS[0], choices=METHODS, help=f"tracker (default {METHODS[0]})")
    t.add_argument("--csv", type=Path, help="also export frame,id,u,v,visible,x,y,z CSV")
    t.add_argument("--stir-json", type=Path, help="also export STIR-style end-frame JSON")
    t.add_argument("--overlay", type=Path, metavar="PNG",
                   help="also draw the tracks on 4 left images, first to last (filled: visible, hollow: hidden)")
    t.add_argument("--kinematics", choices=["on", "off"],
                   help="use the sequence's kinematics.csv when present (default on); off ignores it")
    t.add_argument("--pose-refine", action="store_true",
                   help="learn per-frame corrections of the kinematic poses (regularised towards them)")
    t.add_argument("--hand-eye", type=Path,
                   help="YAML with T_ecm_cam (4x4, metres): kinematics.csv holds ECM poses, not camera poses")
    t.add_argument("--kinematics-offset-s", type=float, default=0.0, metavar="S",
                   help=field_meta(KinematicsConfig, "time_offset_s").doc)
    fit_args(t)
    t.set_defaults(func=cmd_track)

    e = sub.add_parser("eval", help="score a track file against SEQ/gt/tracks.npz and/or STIR labels (gt/stir_end.json)")
    e.add_argument("seq", type=Path)
    e.add_argument("--pred", type=Path, required=True)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    for f in fields(TapVidConfig):
        flag = "--tapvid-size" if f.name == "size" else "--" + f.name.replace("_", "-")
        config_option(e, flag, TapVidConfig, f.name, dest=f"tapvid_{f.name}")
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("recon", help="fit the model and export depth maps and coloured point clouds (PLY)")
    r.add_argument("seq", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--frames", help="comma-separated frame indices (default: first, middle, last)")
    fit_args(r)
    r.set_defaults(func=cmd_recon)

    b = sub.add_parser("bench", help="benchmark every method on a fixed synthetic set")
    b.add_argument("--out", type=Path, default=Path("out/bench"))
    b.add_argument("--preset", choices=get_args(BenchPreset), default="default",
                   help="the set of sequences (default: default, hard and long)")
    b.add_argument("--methods", nargs="+", help="methods to run (default: all baselines + invnerf + ablations)")
    b.add_argument("--seeds", type=int, nargs="+", help="sequence seeds (default: the preset's)")
    b.add_argument("--size", type=_parse_size, help="WxH of every sequence (default: the preset's, e.g. 256x192)")
    b.add_argument("--frames", type=int, help="frames per sequence (default: the preset's, e.g. 48)")
    b.add_argument("--no-speed", action="store_true", help="skip the generator/front-end speed measurements")
    b.add_argument("--no-ros", action="store_true", help="skip the ROS node latency benchmark")
    b.add_argument("--no-kinematics", action="store_true", help="skip the exact/no/noisy kinematics comparison")
    b.add_argument("--no-accuracy", action="store_true", help="skip the methods-on-the-set accuracy tables")
    b.add_argument("--docs", type=Path, default=None,
                   help="also copy each Markdown result under its published name into this folder (e.g. docs/bench)")
    fit_args(b)
    b.set_defaults(func=cmd_bench)

    so = sub.add_parser("soak", help="run the node for a long time (default 30 min) and check memory, error and drops")
    so.add_argument("--out", type=Path, default=Path("out/soak"))
    so.add_argument("--docs", type=Path, default=None, help="also copy soak.md and soak.png into this folder")
    for f in fields(SoakConfig):
        config_option(so, "--" + f.name.replace("_", "-"), SoakConfig, f.name)
    so.set_defaults(func=cmd_soak)

    rec = sub.add_parser("record", help="record ROS 2 topics to a bag or a sequence folder")
    rec.add_argument("out", type=Path)
    rec.add_argument("--topics", nargs="+", default=None)
    rec.add_argument("--duration-s", type=float, default=10.0)
    rec.add_argument("--to", choices=["bag", "sequence"], default="bag")
    rec.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    rec.set_defaults(func=cmd_record)

    si = sub.add_parser("stir-import", help="turn a STIR clip (calib.json + left/right mp4) into a sequence folder")
    si.add_argument("clip_dir", type=Path)
    si.add_argument("out", type=Path)
    si.add_argument("--max-frames", type=int)
    si.add_argument("--start-json", type=Path, help="2D start labels (IR tattoo centres) → queries")
    si.add_argument("--end-json", type=Path, help="2D end labels → gt/stir_end.json for scoring")
    si.add_argument("--end-json-3d", type=Path, help="3D end labels (mm) → gt/stir_end.json")
    si.add_argument("--start-json-3d", type=Path, help="3D start labels (mm) → the 3D zero-motion control")
    si.add_argument("--clip", help="label key to use when the JSON holds several clips")
    si.add_argument("--seq", help="sequence sub-folder (e.g. seq01) when left/ holds several")
    si.set_defaults(func=cmd_stir_import)

    sb = sub.add_parser("stir-bench", help="import, track and score every STIR clip of a folder (pooled as STIR does)")
    sb.add_argument("clips_dir", type=Path)
    sb.add_argument("--out", type=Path, required=True)
    for f in fields(StirBenchConfig):
        kwargs: dict[str, Any] = {"nargs": "+"} if f.name == "methods" else {}
        config_option(sb, "--" + f.name.replace("_", "-"), StirBenchConfig, f.name, dest=f"sb_{f.name}", **kwargs)
    fit_args(sb)
    sb.set_defaults(func=cmd_stir_bench)

    sc = sub.add_parser("scared-import", help="turn a SCARED keyframe (stacked rgb.mp4 + frame_data/) into a sequence")
    sc.add_argument("data_dir", type=Path)
    sc.add_argument("out", type=Path)
    sc.add_argument("--max-frames", type=int)
    sc.set_defaults(func=cmd_scared_import)

    d = sub.add_parser("demo", help="the main job on the embedded default (what `make demo` runs)")
    d.add_argument("--out", type=Path, default=Path("out/demo"))
    d.add_argument("--offline", action="store_true", help="skip the ROS pipeline part")
    fit_args(d)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Seq[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (InputError, ConfigError, UsageError) as err:
        print(f"surg-invnerf {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"surg-invnerf {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

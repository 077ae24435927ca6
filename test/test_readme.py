"""README.md and docs/: generated parameter tables, topic table, links, and no development history.

The parameter tables are compared with what tools/gen_readme_params.py would write from the config
classes; the topic table with the topic names the node's source creates; every relative link must
resolve; README, docs and the config help must describe the product, not how it came to be.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

import surg_invnerf_ros.config as config_pkg
from surg_invnerf_ros.config import field_docs

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
ROS = REPO / "surg_invnerf_ros" / "ros"
#: docs/bench holds one file per benchmark, under the name the benchmark is known by.
BENCH_FILES = {"bench.md", "bench_default.md", "vs_baseline.md", "ablations.md", "kinematics.md", "ros.md",
               "speed.md", "gpu.md", "soak.md", "long.md"}
README_MAX_BYTES = 15 * 1024

# Words that speak of the repository's own history: work sessions, targets by their tracker name,
# issue numbers ("#12", "issue 12", "issue-3").
HISTORY = re.compile(r"\bsessions?\b|\bthe bar\b|\bissues?[ -]?#?\d+|(?<![\w&/])#\d+\b", re.IGNORECASE)
# In file names also re-run and per-session copies (`bench_rerun_s3.md`, `ros_256_session2.md`).
HISTORY_NAME = re.compile(r"session|rerun|issue|(^|_)bar(_|\.|$)|_s\d+\.md$|_tau\d", re.IGNORECASE)


def _generator():
    spec = importlib.util.spec_from_file_location("gen_readme_params", REPO / "tools" / "gen_readme_params.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _docs_md() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


class TestGeneratedParameters:
    def test_readme_and_parameters_doc_match_the_generator(self):
        gen = _generator()
        for path, text in gen.expected().items():
            assert path.is_file(), f"{path.relative_to(REPO)} missing: run python tools/gen_readme_params.py"
            assert path.read_text(encoding="utf-8") == text, (
                f"{path.relative_to(REPO)} differs from the config classes: run python tools/gen_readme_params.py")

    def test_every_declared_parameter_is_documented(self):
        gen = _generator()
        readme = README.read_text(encoding="utf-8")
        doc = gen.PARAMETERS_DOC.read_text(encoding="utf-8")
        for exe, _, cfg_type in gen.NODES:
            for name, *_ in gen.leaf_fields(cfg_type):
                assert f"| `{name}` |" in doc, f"docs/parameters.md lacks {exe}'s {name}"
                if cfg_type is gen.NodeConfig and not name.startswith(tuple(gen.README_ELSEWHERE)):
                    assert f"| `{name}` |" in readme, f"README.md lacks {name}"

    def test_a_changed_default_is_caught(self):
        gen = _generator()
        block = gen.readme_block()
        assert "| `refine.warm_fit_s` | `1.0` |" in block
        readme = README.read_text(encoding="utf-8").replace("| `refine.warm_fit_s` | `1.0` |",
                                                            "| `refine.warm_fit_s` | `2.0` |")
        assert gen.replace_block(readme, block) != readme

    def test_missing_markers_are_refused(self):
        with pytest.raises(ValueError, match="params:begin"):
            _generator().replace_block("# no markers here\n", "x")


def _code_topics() -> set[str]:
    """Topic and service names the tracker's source creates (string literals, no rclpy import)."""
    names: set[str] = set()
    for file in ("track_node.py", "publishers.py", "tf.py"):
        tree = ast.parse((ROS / file).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in (
                    "create_publisher", "create_subscription", "create_service"):
                names |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") in ("INPUT_TOPICS", "KINEMATICS_TOPIC")
                                                    for t in node.targets):
                names |= {c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant)
                          and isinstance(c.value, str)}
    return names


def test_readme_lists_every_topic_the_node_creates():
    topics = _code_topics()
    assert {"~/tracked_points", "/diagnostics", "stereo/left/image_rect", "ecm/measured_cp"} <= topics
    section = README.read_text(encoding="utf-8").split("## ROS 2 node", 1)[1].split("\n## ", 1)[0]
    missing = sorted(t for t in topics if f"`{t}`" not in section)
    assert not missing, f"README.md topic table lacks {missing}"


def test_readme_size():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; keep it under {README_MAX_BYTES} (details go to docs/)"


def test_relative_links_resolve():
    for md in [README, *_docs_md()]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", md.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+://", target):
                continue
            assert (md.parent / target).exists(), f"{md.relative_to(REPO)}: broken link {target}"


def test_docs_bench_holds_one_file_per_benchmark():
    md = {p.name for p in (DOCS / "bench").glob("*.md")}
    assert md <= BENCH_FILES, f"docs/bench: unexpected {sorted(md - BENCH_FILES)} (one file per benchmark)"
    assert {"bench.md", "kinematics.md", "ros.md", "speed.md"} <= md


def _config_help() -> list[tuple[str, str]]:
    """(where, text) for every config field's help (CLI --help, ROS descriptions) and the config/ files.

    Class and module docstrings are not read here."""
    out = []
    for name in config_pkg.__all__:
        cls = getattr(config_pkg, name)
        if name.endswith("Config") and isinstance(cls, type) and dataclasses.is_dataclass(cls):
            out += [(f"{name}.{key}", doc) for key, _, doc, *_ in field_docs(cls)]
    out += [(str(p.relative_to(REPO)), p.read_text(encoding="utf-8")) for p in sorted((REPO / "config").iterdir())
            if p.suffix in (".yaml", ".rviz")]
    return out


class TestNoHistory:
    @pytest.mark.parametrize("text,bad", [
        ("measured in session 5", True), ("the bar is met", True), ("see issue 12", True), ("fixes #12", True),
        ("issue-3 targets", True), ("the bare-metal tip", False), ("the tissue moves", False),
        ("`track_<id>` frames", False), ("colour #fff", False)])
    def test_pattern(self, text, bad):
        assert bool(HISTORY.search(text)) is bad

    def test_readme_and_docs(self):
        for md in [README, *_docs_md()]:
            for i, line in enumerate(md.read_text(encoding="utf-8").splitlines(), 1):
                hit = HISTORY.search(line)
                assert not hit, f"{md.relative_to(REPO)}:{i}: {hit.group(0)!r} speaks of development history"

    def test_code_config_and_tests(self):
        # In code "session" also means a process session (start_new_session), so only numbered ones count.
        pattern = re.compile(r"\bissues?[ -]?#?\d+|\bthe bar\b|\bsessions? \d+", re.IGNORECASE)
        files = [p for d in ("surg_invnerf_ros", "test", "config", "launch", "tools") for p in (REPO / d).rglob("*")
                 if p.suffix in (".py", ".yaml", ".sh") and p.resolve() != Path(__file__).resolve()]
        assert len(files) > 50
        for path in files:
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                hit = pattern.search(line)
                assert not hit, f"{path.relative_to(REPO)}:{i}: {hit.group(0)!r} speaks of development history"

    def test_doc_file_names(self):
        for p in DOCS.rglob("*"):
            assert not HISTORY_NAME.search(p.name), f"{p.relative_to(REPO)}: a history copy; keep one file per benchmark"

    def test_config_help(self):
        for where, text in _config_help():
            hit = HISTORY.search(text)
            assert not hit, f"{where}: {hit.group(0)!r} speaks of development history"

"""FitConfig validation: bad values are refused with the key named; device resolution."""

import pytest
import torch

from surg_invnerf_ros.config import FitConfig, HexPlaneConfig, load_config, to_dict
from surg_invnerf_ros.device import resolve_device
from surg_invnerf_ros.errors import ConfigError


class TestFitConfig:
    def test_defaults_round_trip(self, tmp_path):
        import yaml

        p = tmp_path / "fit.yaml"
        p.write_text(yaml.safe_dump(to_dict(FitConfig())))
        assert load_config(FitConfig, p) == FitConfig()

    def test_shipped_yaml_loads(self):
        from pathlib import Path

        p = Path(__file__).resolve().parents[2] / "config" / "fit.yaml"
        assert load_config(FitConfig, p) == FitConfig()

    @pytest.mark.parametrize("override, key", [
        ("time_budget_s=-1", "fit.time_budget_s"),
        ("device=tpu", "fit.device"),
        ("hexplane.feature_dims=[8, 8, 8]", "fit.hexplane.feature_dims"),
        ("canonical.feature_dims=[4]", "fit.canonical.feature_dims"),
        ("coupling.axis_order=[0, 1]", "fit.coupling.axis_order"),
        ("sampler.error_share=1.5", "fit.sampler.error_share"),
        ("sampler.strategy=random", "fit.sampler.strategy"),
        ("loss.corr_weight=-0.1", "fit.loss.corr_weight"),
        ("render.workspace_percentiles=[90, 10]", "fit.render.workspace_percentiles"),
        ("coupling.num_layers=0", "fit.coupling.num_layers"),
    ])
    def test_bad_input(self, override, key):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(FitConfig, None, [override])

    def test_unknown_key(self):
        with pytest.raises(ConfigError, match="hexplane.planes"):
            load_config(FitConfig, None, ["hexplane.planes=3"])

    def test_direct_construction_validates(self):
        with pytest.raises(ConfigError, match="fit.hexplane.feature_dims"):
            HexPlaneConfig(resolutions=(8, 16), feature_dims=(4,))


class TestResolveDevice:
    def test_cpu_and_auto(self):
        assert resolve_device("cpu") == "cpu"
        assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")

    @pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
    def test_cuda_without_gpu_is_a_clear_error(self):
        with pytest.raises(ConfigError, match="fit.device: cuda requested but torch sees no CUDA device"):
            resolve_device("cuda", key="fit.device")

    def test_cuda_without_gpu_mocked(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        with pytest.raises(ConfigError, match="^device: cuda requested"):
            resolve_device("cuda")
        assert resolve_device("auto") == "cpu"

    def test_unknown(self):
        with pytest.raises(ConfigError, match="fit.device: expected one of auto|cpu|cuda"):
            resolve_device("tpu", key="fit.device")


class TestFitAndFrontend:
    def test_one_file_and_one_override_list_drive_both(self, tmp_path):
        from surg_invnerf_ros.config import load_fit_and_frontend

        path = tmp_path / "run.yaml"
        path.write_text("max_steps: 7\nfrontend:\n  flow:\n    gaps: [1, 4]\n  workers: 2\n")
        fit, front = load_fit_and_frontend(path, ["frontend.stereo.block_size=7", "seed=3"])
        assert (fit.max_steps, fit.seed) == (7, 3)
        assert front.flow.gaps == (1, 4) and front.workers == 2 and front.stereo.block_size == 7

    @pytest.mark.parametrize("override, match", [("frontend.bogus=1", "frontend.bogus: unknown key"),
                                                 ("frontend.flow.gaps=[0]", "frontend.flow.gaps: expected >= 1")])
    def test_frontend_errors_name_the_dotted_key(self, override, match):
        from surg_invnerf_ros.config import load_fit_and_frontend

        with pytest.raises(ConfigError, match=match):
            load_fit_and_frontend(None, [override])

"""serve/config.yaml and its GPU variant, checked strictly: Ray's ServeDeploySchema, plus no key it does not define
(it accepts and ignores misspellings) and no application argument ServeConfig does not have."""

from __future__ import annotations

import copy

import pytest
import yaml

from secondthought.config import ConfigError
from serve.deploy import CONFIG, GPU_CONFIG, check_config, load_config


@pytest.mark.parametrize("path", [CONFIG, GPU_CONFIG], ids=["cpu", "gpu"])
def test_the_shipped_configs_pass_and_say_what_matters(path):
    schema = check_config(yaml.safe_load(path.read_text()), str(path))
    [app] = schema.applications
    assert app.import_path == "serve.app:build_app" and app.route_prefix == "/"
    assert schema.http_options.request_timeout_s
    by_name = {d.name: d for d in app.deployments}
    assert set(by_name) == {"Api", "Realigner"}
    for d in by_name.values():  # explicit on both: the ingress's default of 5 caps the whole server
        assert d.max_ongoing_requests > 5 and d.max_queued_requests > 0 and d.ray_actor_options
        assert d.max_surge_percent == 100
    model = by_name["Realigner"]
    scaling = model.autoscaling_config
    assert scaling["min_replicas"] >= 1 and scaling["max_replicas"] > scaling["min_replicas"]
    assert {"target_ongoing_requests", "upscale_delay_s", "downscale_delay_s"} <= set(scaling)
    assert model.health_check_period_s and model.health_check_timeout_s and model.graceful_shutdown_timeout_s


def test_both_configs_listen_on_loopback_and_the_gpu_one_asks_for_gpus():
    for path in (CONFIG, GPU_CONFIG):
        assert yaml.safe_load(path.read_text())["http_options"]["host"] == "127.0.0.1"
    gpu = yaml.safe_load(GPU_CONFIG.read_text())["applications"][0]
    assert gpu["args"]["device"] == "cuda"
    assert next(d for d in gpu["deployments"] if d["name"] == "Realigner")["ray_actor_options"]["num_gpus"] == 1


@pytest.mark.parametrize("where, key", [
    ("deployments.0", "max_ongoing_request"),
    ("deployments.1.autoscaling_config", "min_replica"),
    ("deployments.1.ray_actor_options", "num_cpu"),
    ("args", "max_batch"),
    ("", "import_pth"),
])
def test_a_misspelled_key_anywhere_is_refused(where, key):
    raw = yaml.safe_load(CONFIG.read_text())
    node = raw["applications"][0]
    for part in filter(None, where.split(".")):
        node = node[int(part)] if part.isdigit() else node[part]
    node[key] = 1
    with pytest.raises(ConfigError, match=key):
        check_config(raw)


def test_misspelled_http_options_and_wrong_types_are_refused():
    raw = yaml.safe_load(CONFIG.read_text())
    bad = copy.deepcopy(raw)
    bad["http_options"]["request_timeout"] = 5
    with pytest.raises(ConfigError, match="http_options.request_timeout"):
        check_config(bad)
    bad = copy.deepcopy(raw)
    bad["applications"][0]["deployments"][1]["max_ongoing_requests"] = "many"
    with pytest.raises(ConfigError, match="max_ongoing_requests"):
        check_config(bad)


def test_load_config_fills_in_model_host_and_port(tmp_path):
    raw = load_config(None, str(tmp_path), "127.0.0.1", 9123)
    assert raw["applications"][0]["args"]["model"] == str(tmp_path.resolve())
    assert raw["http_options"] == dict(raw["http_options"], host="127.0.0.1", port=9123)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_the_builder_refuses_a_bad_model_or_argument_before_any_replica(tmp_path):
    from serve.app import build_app

    with pytest.raises(ConfigError, match="args.model is required"):
        build_app({})
    with pytest.raises(ConfigError, match="is not a model folder"):
        build_app({"model": str(tmp_path)})
    with pytest.raises(ConfigError, match="unexpected keyword argument 'max_batch'"):
        build_app({"model": str(tmp_path), "max_batch": 3})
    with pytest.raises(ConfigError, match="serve.device must be"):
        build_app({"model": str(tmp_path), "device": "tpu"})

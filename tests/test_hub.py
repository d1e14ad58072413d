"""model.init: timm: the hub weights fetched once, by a local rule, from the Hugging Face cache without network
(or the hub), into one file the init job loads; without cache and network, one line in seconds."""

import os
import time

import pytest
import torch
from conftest import SMOKE, snakemake
from safetensors.torch import load_file, save_file

from soupflow.jobs.hub import fetch_pretrained, hub_weights
from soupflow.plan.model_file import WeightsError

NAME = "test_resnet.r160_in1k"  # timm's tiny test model; its weights are timm/test_resnet.r160_in1k on the hub
REVISION = "0123456789abcdef0123456789abcdef01234567"
#: a workflow that fetches NAME's weights: fashion_mnist as the smoke test's, one fine-tune, one soup
CONFIG = {**SMOKE, "model": {"name": NAME, "init": "timm"}, "pretrain": {}, "grid": {"lr": [0.01]}, "runs": [],
          "soups": [{"recipe": "uniform"}], "analysis": {}}


@pytest.fixture(scope="module")
def weights():
    """Randomly initialised weights of NAME, as the hub's model.safetensors holds them (timm's own layout)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model(NAME, pretrained=False).state_dict()


@pytest.fixture
def hf_home(tmp_path, weights):
    """An HF_HOME whose cache holds NAME's weights as huggingface_hub lays them out: the file in a snapshot
    folder named by the revision, and refs/main naming that revision."""
    repo = tmp_path / "hf" / "hub" / f"models--timm--{NAME}"
    (repo / "snapshots" / REVISION).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(repo / "snapshots" / REVISION / "model.safetensors"))
    return tmp_path / "hf"


@pytest.fixture
def offline(monkeypatch):
    """This process's huggingface_hub pointed at an empty cache and at a hub that refuses connections."""
    from huggingface_hub import constants

    def use(hf_home, hub_offline=False):
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", hub_offline)
        monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
        for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
            monkeypatch.delenv(proxy, raising=False)
    return use


def test_timm_names_the_hub_repository_and_the_safetensors_file_first():
    found = hub_weights(NAME)
    assert found.repo == "timm/test_resnet.r160_in1k" and found.files[0] == "model.safetensors"
    with pytest.raises(WeightsError, match="config key 'model.name'"):
        hub_weights("test_resnet.no_such_tag")


def test_the_cached_weights_are_written_without_network_and_load_in_plain_timm(tmp_path, hf_home, offline, weights):
    import timm

    offline(hf_home)  # the hub refuses connections: the cache alone must do
    out = tmp_path / "results" / "pretrained" / f"{NAME}.safetensors"
    fetch_pretrained(NAME, str(out))
    assert load_file(str(out)).keys() == weights.keys()
    model = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay={"file": str(out)}, num_classes=3)
    loaded = model.state_dict()
    body = [key for key in weights if not key.startswith(model.default_cfg["classifier"])]
    assert body and all(torch.equal(loaded[key], weights[key]) for key in body)
    assert loaded[f"{model.default_cfg['classifier']}.weight"].shape[0] == 3  # timm re-created the head


@pytest.mark.parametrize("hub_offline", [False, True])
def test_without_cache_or_network_it_fails_in_seconds_naming_model_init(tmp_path, offline, hub_offline):
    offline(tmp_path / "empty", hub_offline)
    started = time.monotonic()
    with pytest.raises(WeightsError) as info:
        fetch_pretrained(NAME, str(tmp_path / "w.safetensors"))
    message = str(info.value)
    assert time.monotonic() - started < 5  # a refused probe, not huggingface_hub's retries (~25 s)
    assert "\n" not in message and message.startswith("config key 'model.init' is 'timm'")
    assert f"timm.create_model('{NAME}', pretrained=True)" in message and "model.file" in message
    assert not (tmp_path / "w.safetensors").exists()


@pytest.mark.slow
def test_the_workflow_fetches_once_on_the_submitting_host_and_the_init_reads_that_file(tmp_path, hf_home):
    work = tmp_path / "work"
    work.mkdir()
    target = f"results/pretrained/{NAME}.safetensors"
    planned = snakemake(work, CONFIG, "results/init/model.safetensors", "-n", "--quiet", "rules")  # no network
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "pretrained_weights" in planned.stdout  # an input of the init
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    fetched = snakemake(work, CONFIG, target, env=env, cores=("--cores", "1"))
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    assert "localrule pretrained_weights" in fetched.stderr and (work / target).exists()
    assert "found in the Hugging Face cache" in (work / "results/logs/pretrained_weights.log").read_text()


@pytest.mark.slow
def test_the_workflow_without_cache_or_network_fails_in_seconds_naming_model_init(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    env |= {"HF_HOME": str(tmp_path / "empty"), "HF_ENDPOINT": "http://127.0.0.1:9"}  # refused at once
    started = time.monotonic()
    failed = snakemake(work, CONFIG, f"results/pretrained/{NAME}.safetensors", env=env, cores=("--cores", "1"))
    assert failed.returncode != 0 and time.monotonic() - started < 60  # parse and job; huggingface_hub alone: ~25 s
    assert "config key 'model.init' is 'timm'" in failed.stderr and "pretrained=True" in failed.stderr

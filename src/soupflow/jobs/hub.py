"""The pretrained_weights job (``model.init: timm``): timm's hub weights of ``model.name`` fetched once, on the
machine that runs Snakemake (a local rule: cluster nodes often have no network), into one safetensors file
that the init job loads through timm's ``pretrained_cfg_overlay`` without touching the network.

Offline first: the file the hub repository holds is looked up in the Hugging Face cache (``HF_HOME``,
``HF_HUB_CACHE``) and read from there without a request; only when it is not there is the hub asked, after a
connection probe of a few seconds, so that without cache and network the job fails at once, with one line
saying what to do, instead of after huggingface_hub's retries (~25 s per file).
"""

from __future__ import annotations

import logging
import socket
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from soupflow.plan.model_file import WeightsError
from soupflow.store.io import atomic_save_safetensors

log = logging.getLogger("soupflow")

#: seconds the connection probe waits for the hub (or the https proxy)
PROBE_SECONDS = 5.0


@dataclass(frozen=True)
class HubWeights:
    """Where timm's ``pretrained_cfg`` says a model's weights are: a hub repository (at a revision), and the
    files that may hold them, the safetensors one first (as timm's ``load_state_dict_from_hf`` tries them)."""

    name: str
    repo: str
    revision: str | None
    files: tuple[str, ...]

    @property
    def fill_command(self) -> str:
        """What fills the cache on a machine with network."""
        return f"python -c \"import timm; timm.create_model('{self.name}', pretrained=True)\""


def hub_weights(name: str) -> HubWeights:
    """Where timm fetches ``model.name``'s pretrained weights from (no network: timm's registry)."""
    from timm.models import get_pretrained_cfg  # 2.6 s: only in this job

    try:
        cfg = get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError as error:
        raise WeightsError(f"config key 'model.name' is {name!r}, which has no timm pretrained weights ({error}); "
                           "allowed: a name of timm.list_pretrained() with model.init: timm") from None
    if not cfg.hf_hub_id:
        raise WeightsError(f"config key 'model.init' is 'timm', but timm's weights of {name!r} are not on the Hugging "
                           f"Face hub (only at {cfg.url}); allowed: download them and set model.file, or model.init: "
                           "pretrain")
    repo, _, revision = cfg.hf_hub_id.partition("@")
    from huggingface_hub.constants import PYTORCH_WEIGHTS_NAME, SAFETENSORS_SINGLE_FILE

    filename = cfg.hf_hub_filename or PYTORCH_WEIGHTS_NAME
    safe = filename.replace(PYTORCH_WEIGHTS_NAME, SAFETENSORS_SINGLE_FILE) if filename.endswith(".bin") else filename
    return HubWeights(name, repo, revision or None, tuple(dict.fromkeys((safe, filename))))


def cached_file(weights: HubWeights) -> str | None:
    """The weights' file in the Hugging Face cache, found without a request; None when it is not there."""
    from huggingface_hub import try_to_load_from_cache

    for filename in weights.files:
        found = try_to_load_from_cache(weights.repo, filename, revision=weights.revision)
        if isinstance(found, str):
            return found
    return None


def hub_unreachable() -> str | None:
    """Why the hub cannot be asked, found in at most ``PROBE_SECONDS``: offline mode, or no connection to its
    host (or to the https proxy, when one is set); None when it can."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    host = urlsplit(constants.ENDPOINT)
    proxy = urllib.request.getproxies().get("https")
    if proxy and not urllib.request.proxy_bypass(host.hostname or ""):
        host = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    port = host.port or (443 if host.scheme == "https" else 80)
    try:
        socket.create_connection((host.hostname, port), timeout=PROBE_SECONDS).close()
    except OSError as error:
        return f"no connection to {host.hostname}:{port}: {error}"
    return None


def downloaded_file(weights: HubWeights) -> str:
    """The weights' file downloaded into the Hugging Face cache (the hub is reachable)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for filename in weights.files:
        try:
            return hf_hub_download(weights.repo, filename, revision=weights.revision)
        except EntryNotFoundError:
            continue
    raise WeightsError(f"config key 'model.name' is {weights.name!r}, whose hub repository {weights.repo} holds none "
                       f"of {', '.join(weights.files)}; allowed: another pretrained tag, or model.file")


def fetch_pretrained(name: str, out: str) -> None:
    """Write timm's pretrained weights of ``name`` to ``out`` as the hub holds them (a ``.bin`` is converted),
    with their source in the metadata: the file timm's ``pretrained_cfg_overlay={"file": out}`` loads."""
    from huggingface_hub import constants

    weights = hub_weights(name)
    source = cached_file(weights)
    if source is None:
        why = hub_unreachable()
        if why is not None:
            raise WeightsError(
                f"config key 'model.init' is 'timm', but the weights of {name!r} ({weights.repo}) are not in the "
                f"Hugging Face cache {constants.HF_HUB_CACHE} and the hub cannot be reached ({why}); allowed: fill "
                f"the cache on a machine with network ({weights.fill_command}, with the same HF_HOME), or set "
                "model.file to a timm-format checkpoint, or model.init: pretrain")
        log.info("downloading %s from the Hugging Face hub (%s)", name, weights.repo)
        source = downloaded_file(weights)
    else:
        log.info("%s found in the Hugging Face cache: no network used", name)
    atomic_save_safetensors(_read(source), out, {"model": name, "hf_hub_id": weights.repo,
                                                 "hf_file": source.rsplit("/", 1)[-1]})
    log.info("wrote %s from %s", out, source)


def _read(path: str) -> dict:
    """Every tensor of a hub file: safetensors, or a pickled state dict read with ``weights_only``."""
    import torch
    from safetensors.torch import load_file

    if path.endswith(".safetensors"):
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state

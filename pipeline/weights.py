"""Resolving ``--weights none|default|PATH`` for a backbone.

``default`` goes through the library's own mechanism: the torch hub cache (``TORCH_HOME``) for
torchvision and pytorchvideo, the Hugging Face hub cache (``HF_HOME``) for timm; offline, the
error says where to put the file. ``PATH`` is a state dict (``torch.save``, ``.pth``) or a
``.safetensors`` file. ``none`` is a seeded random init, so two
workers (or two runs) build identical networks. Resolution happens once on the driver before
any worker starts, so a missing file fails the run at once instead of once per video.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


class WeightsError(Exception):
    """Weights cannot be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class WeightsRef:
    """Where a backbone's weights come from.

    Attributes:
        kind: ``none``, ``default`` or ``path``.
        backbone: Backbone name.
        seed: Random-init seed (``none``).
        tag: Pretrained weights name, e.g. ``IMAGENET1K_V1`` (``default``).
        path: State-dict file (``default``: the hub cache file; ``path``: the user's file).
        sha256: Content hash of ``path`` (``path`` kind), so fingerprints follow the bytes.
    """

    kind: str
    backbone: str
    seed: int = 0
    tag: str = ""
    path: str = ""
    sha256: str = ""

    def identity(self) -> dict:
        """What identifies these weights in a feature-set fingerprint (no local paths)."""
        if self.kind == "none":
            return {"kind": "none", "seed": self.seed}
        if self.kind == "default":
            return {"kind": "default", "tag": self.tag}
        return {"kind": "path", "sha256": self.sha256, "file": Path(self.path).name}


def describe_weights(identity: dict, pretrained_on: str) -> str:
    """What a feature set's backbone weights are, in words: ``random init (seed N)``,
    ``pretrained on ImageNet-1k (IMAGENET1K_V1)`` or ``weights file NAME (sha256 …)``.

    Args:
        identity: :meth:`WeightsRef.identity` (a feature-set spec's ``weights``).
        pretrained_on: The backbone's pretraining dataset (its spec's ``pretrained_on``).
    """
    kind = identity.get("kind")
    if kind == "none":
        return f"random init (seed {identity.get('seed', 0)})"
    if kind == "default":
        return f"pretrained on {pretrained_on} ({identity.get('tag')})"
    return f"weights file {identity.get('file')} (sha256 {str(identity.get('sha256'))[:12]})"


def weights_column(identity: dict) -> str:
    """A short form for tables (``pipeline ls``): ``random(seed 0)``, the tag, or ``file:NAME``."""
    kind = identity.get("kind")
    if kind == "none":
        return f"random(seed {identity.get('seed', 0)})"
    if kind == "default":
        return str(identity.get("tag"))
    if kind == "path":
        return f"file:{identity.get('file')}"
    return str(kind or "unknown")  # e.g. an imported feature set's own record


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_weights_option(values: list[str], backbones: list[str]) -> dict[str, str]:
    """Per-backbone weights from repeated ``--weights`` values.

    ``none``/``default``/``PATH`` applies to every backbone; ``NAME=SPEC`` to one; a backbone
    no value names gets ``default`` (pretrained): random weights only when asked.

    Raises:
        ValueError: ``NAME=`` names a backbone not in this run, or a bare PATH is given for
            several backbones.
    """
    out = {name: "default" for name in backbones}  # pretrained unless a value says otherwise
    bare = [v for v in values if "=" not in v]
    for value in bare:
        if value not in ("none", "default") and len(backbones) > 1:
            raise ValueError(
                f"--weights {value}: a weights file fits one backbone; write "
                f"--weights BACKBONE={value} (backbones in this run: {', '.join(backbones)})"
            )
        out.update({name: value for name in backbones})
    for value in values:
        if "=" in value:
            name, spec = value.split("=", 1)
            if name not in out:
                raise ValueError(
                    f"--weights {value}: {name!r} is not a backbone of this run "
                    f"({', '.join(backbones)})"
                )
            out[name] = spec
    return out


def resolve_weights(weights: str, spec, *, seed: int = 0) -> WeightsRef:
    """Check that ``weights`` can be loaded for the backbone ``spec`` and say from where.

    Args:
        weights: ``none``, ``default`` or a file path.
        spec: The backbone's :class:`~pipeline.backbones.BackboneSpec`.
        seed: Random-init seed for ``none``.

    Raises:
        WeightsError: the file does not exist, or ``default`` weights are neither cached nor
            downloadable; the message gives the cache path to fill and the alternatives.
    """
    if weights == "none":
        return WeightsRef(kind="none", backbone=spec.name, seed=seed)
    if weights == "default":
        path = _hub_weights_file(spec) if spec.hf_hub_id else _default_weights_file(spec)
        return WeightsRef(kind="default", backbone=spec.name, tag=spec.weights_tag, path=str(path))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"--weights {weights}: no such file for backbone {spec.name}; give a state-dict "
            "file (.pth) or a .safetensors file, 'default' for the pretrained weights, or "
            "'none' for a random init"
        )
    return WeightsRef(kind="path", backbone=spec.name, path=str(path), sha256=_sha256(path))


def _default_weights_file(spec) -> Path:
    """The hub-cache file of the backbone's pretrained weights, downloading it if possible."""
    import torch

    url = spec.weights_url
    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except Exception as err:  # urllib raises URLError, socket errors, HTTP errors: all mean "offline"
        raise WeightsError(
            f"cannot download the {spec.weights_tag} weights of {spec.name} from {url} "
            f"({type(err).__name__}: {err}). This machine may be offline. Either copy that file "
            f"to {target} (set TORCH_HOME to use another cache), pass --weights "
            f"{spec.name}=/path/to/{os.path.basename(url)}, or use --weights none for a "
            "seeded random init."
        ) from err
    return target


HUB_WEIGHTS_FILE = "model.safetensors"  # what timm's hub repositories hold (timm/<name>)


def _hub_weights_file(spec) -> Path:
    """The backbone's weights file in the Hugging Face hub cache, downloading it if possible.

    A cached file is used without touching the network. Otherwise one metadata request
    (no retries: ``hf_hub_download`` itself retries a dead network for ~30 s) tells at once
    whether the hub can be reached.

    Raises:
        WeightsError: not cached and not downloadable; the message names the repository and
            file to place, and the alternatives.
    """
    from huggingface_hub import (
        constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache,
    )

    repo = spec.hf_hub_id
    cached = try_to_load_from_cache(repo, HUB_WEIGHTS_FILE)
    if isinstance(cached, str):
        return Path(cached)
    try:
        if not constants.HF_HUB_OFFLINE:
            get_hf_file_metadata(hf_hub_url(repo, HUB_WEIGHTS_FILE), timeout=10)
        return Path(hf_hub_download(repo, HUB_WEIGHTS_FILE))
    except Exception as err:  # httpx connection errors, hub HTTP errors, offline mode: all fatal
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise WeightsError(
            f"cannot download the {spec.weights_tag} weights of {spec.name}: file "
            f"{HUB_WEIGHTS_FILE} of hub repository {repo} ({reason}). This machine may be "
            f"offline. Either put that file in the Hugging Face hub cache {constants.HF_HUB_CACHE}"
            f" (`hf download {repo} {HUB_WEIGHTS_FILE}` where there is internet; set HF_HOME "
            f"to use another cache), pass --weights {spec.name}=/path/to/{HUB_WEIGHTS_FILE} "
            "(or a .pth state dict), or use --weights none for a seeded random init."
        ) from err


def load_state_file(path: str | Path) -> dict:
    """The tensors of a weights file: ``.safetensors``, or a ``torch.save`` state dict (bare,
    or wrapped under ``state_dict`` / ``model_state`` as pytorchvideo's files are).

    Raises:
        WeightsError: the file cannot be read as either.
    """
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and safetensors header errors alike
        raise WeightsError(f"{path}: not a readable state-dict or safetensors file "
                           f"({type(err).__name__}: {err})") from err
    for key in ("state_dict", "model_state"):  # torchvision files are bare; pytorchvideo wraps
        if isinstance(state, dict) and key in state:
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def build_with_weights(build, ref: WeightsRef, *, adapt_state=None):
    """Build an architecture and load ``ref``'s weights into it.

    With a weights file the architecture is built on PyTorch's ``meta`` device and the file's
    tensors are assigned to it: its random initialisation, overwritten anyway, would cost every
    worker 0.1 s (ResNet-18), 0.4 s (R(2+1)D-18), 0.6 s (ViT-B/16) or 2 s (ViT-L/16) of CPU.
    A tensor the file does not hold (a non-persistent buffer) would stay unmaterialised: then
    the model is built the plain way.

    Args:
        build: Zero-argument callable returning the randomly initialised architecture (with the
            pretrained weights' class count, so their state dict fits).
        ref: Resolved weights.
        adapt_state: Optional ``(state, model) -> state`` run before loading, e.g. timm's
            checkpoint filter (position embeddings resampled to the model's grid).

    Raises:
        WeightsError: the file cannot be read, or its state dict does not fit the architecture.
    """
    import torch

    torch.manual_seed(ref.seed)  # `none`: same seed → identical networks on every worker
    if ref.kind == "none":
        return build()
    state = load_state_file(ref.path)
    with torch.device("meta"):
        model = build()
    if adapt_state is not None:
        state = adapt_state(state, model)
    _load_state(model, state, ref, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model = build()
        _load_state(model, state, ref, assign=False)
    return model


def _load_state(model, state, ref: WeightsRef, *, assign: bool) -> None:
    try:
        model.load_state_dict(state, assign=assign)
    except RuntimeError as err:
        raise WeightsError(f"{ref.path} does not fit {ref.backbone}: {err}") from err

"""The seed's pretrained image and text encoders behind one registry.

The seed compared products by embeddings from MobileNetV2 (images), CLIP and FashionCLIP
(images and texts), ALIGN (images and texts) and RoBERTa-large + EfficientNet-B5 (texts and
images). `ENCODERS` names them; `load_encoder` loads one with transformers' `from_pretrained`
from a hub name or a local directory and returns an `Encoder` whose `embed_images` /
`embed_texts` give float32, L2-normalised rows, so a cosine similarity is a plain dot product
whichever model produced the vectors.

Our machines cannot download weights, so loading uses local files only unless told
otherwise, and a model that is not there raises `EncoderUnavailable` naming the encoder, the
source and how to make it available; `encoder_available` answers the same question cheaply so
the pipeline can skip an encoder and say why. torch and transformers are imported inside the
functions that need them: importing this module (for the registry) stays light.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fashion_recs.errors import FashionRecsError

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

Modality = Literal["image", "text"]
SourcePath = str | os.PathLike[str]
SourceArg = SourcePath | Mapping[str, SourcePath] | None

# The part name of an encoder that loads everything from one source.
SINGLE = "model"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class EncoderError(FashionRecsError):
    """An encoder was asked for something it cannot do: an unknown name, a modality it does not
    embed, or a source that holds a different kind of model."""


class EncoderUnavailable(EncoderError):
    """An encoder's pretrained weights (or its processor) are not on this machine and could not
    be fetched."""


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder embeds and where its weights come from by default.

    `default_sources` and `model_types` are keyed by part: "model" for an encoder loaded from
    one source, "text" and "image" for one that pairs two separately trained models.
    `joint_space` says whether its image and text vectors can be compared with each other.
    """

    name: str
    modalities: tuple[Modality, ...]
    default_sources: Mapping[str, str]
    model_types: Mapping[str, str]
    joint_space: bool
    description: str

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.default_sources)

    @property
    def default_source(self) -> str | dict[str, str]:
        """The hub name, or for a two-model encoder a {"text": ..., "image": ...} mapping."""
        if self.parts == (SINGLE,):
            return self.default_sources[SINGLE]
        return dict(self.default_sources)


ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in [
        EncoderSpec(
            name="mobilenet_v2",
            modalities=("image",),
            default_sources={SINGLE: "google/mobilenet_v2_1.0_224"},
            model_types={SINGLE: "mobilenet_v2"},
            joint_space=False,
            description="MobileNetV2 (ImageNet): the globally pooled last feature map.",
        ),
        EncoderSpec(
            name="clip",
            modalities=("image", "text"),
            default_sources={SINGLE: "openai/clip-vit-base-patch32"},
            model_types={SINGLE: "clip"},
            joint_space=True,
            description="CLIP ViT-B/32: projected image and text embeddings in one space.",
        ),
        EncoderSpec(
            name="fashion_clip",
            modalities=("image", "text"),
            default_sources={SINGLE: "patrickjohncyh/fashion-clip"},
            model_types={SINGLE: "clip"},
            joint_space=True,
            description="FashionCLIP: CLIP fine-tuned on fashion products; one shared space.",
        ),
        EncoderSpec(
            name="align",
            modalities=("image", "text"),
            default_sources={SINGLE: "kakaobrain/align-base"},
            model_types={SINGLE: "align"},
            joint_space=True,
            description="ALIGN (EfficientNet + BERT): image and text embeddings in one space.",
        ),
        EncoderSpec(
            name="roberta_efficientnet",
            modalities=("image", "text"),
            default_sources={"text": "FacebookAI/roberta-large", "image": "google/efficientnet-b5"},
            model_types={"text": "roberta", "image": "efficientnet"},
            joint_space=False,
            description=(
                "RoBERTa-large for texts (masked mean of token states) and EfficientNet-B5 for "
                "images (pooled features): two unrelated spaces, so an image vector is not "
                "comparable to a text vector, unlike CLIP or ALIGN."
            ),
        ),
    ]
}


def get_spec(name: str) -> EncoderSpec:
    """The registry entry for `name`; an unknown name lists the ones there are."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise EncoderError(
            f"Unknown encoder {name!r}: choose one of {', '.join(ENCODERS)}."
        ) from None


@dataclass(frozen=True)
class _Embedder:
    """One modality of a loaded encoder: a batch in, unnormalised vectors of width `dim` out."""

    part: str
    dim: int
    forward: Callable[[list[Any]], torch.Tensor]


class Encoder:
    """A loaded encoder. Vectors are float32 rows of unit L2 norm.

    `sources` and `revisions` are keyed by part (see `EncoderSpec`); `model_id` and `revision`
    flatten them into one string each for run metadata. A revision is the hub commit hash when
    the model came from the hub cache, else "sha256:" and the start of the hash of the model's
    config.json, so a run records which weights produced its vectors.
    """

    def __init__(
        self,
        spec: EncoderSpec,
        sources: Mapping[str, str],
        revisions: Mapping[str, str],
        embedders: Mapping[Modality, _Embedder],
        device: torch.device,
        batch_size: int,
        log_every: int,
    ) -> None:
        self.spec = spec
        self.sources = dict(sources)
        self.revisions = dict(revisions)
        self.device = device
        self.batch_size = batch_size
        self.log_every = log_every
        self._embedders = dict(embedders)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def modalities(self) -> tuple[Modality, ...]:
        return self.spec.modalities

    @property
    def model_id(self) -> str:
        return _flatten(self.sources)

    @property
    def revision(self) -> str:
        return _flatten(self.revisions)

    @property
    def dims(self) -> dict[Modality, int]:
        """Vector width per modality."""
        return {modality: e.dim for modality, e in self._embedders.items()}

    @property
    def dim(self) -> int:
        """The vector width; an encoder whose image and text widths differ has no single one."""
        widths = set(self.dims.values())
        if len(widths) != 1:
            raise EncoderError(
                f"The {self.name} encoder has a different width per modality ({self.dims}); "
                "read encoder.dims[modality] instead."
            )
        return widths.pop()

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """One row per image, in order. Images are converted to RGB first (the processors
        expect three channels; catalogues hold greyscale and RGBA files too)."""
        from PIL import Image

        rgb = []
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise EncoderError(f"Item {i} is a {type(image).__name__}, not a PIL image.")
            rgb.append(image if image.mode == "RGB" else image.convert("RGB"))
        return self._embed("image", rgb)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, in order; texts longer than the model's context are truncated."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise EncoderError(f"Item {i} is a {type(text).__name__}, not a string.")
        return self._embed("text", list(texts))

    def _embed(self, modality: Modality, items: list[Any]) -> np.ndarray:
        import torch

        embedder = self._embedders.get(modality)
        if embedder is None:
            able = [s.name for s in ENCODERS.values() if modality in s.modalities]
            raise EncoderError(
                f"The {self.name} encoder embeds {' and '.join(self.modalities)}s only, not "
                f"{modality}s; encoders that embed {modality}s: {', '.join(able)}."
            )
        out = np.empty((len(items), embedder.dim), dtype=np.float32)
        n_batches = math.ceil(len(items) / self.batch_size)
        started = time.perf_counter()
        with torch.inference_mode():
            for batch_no, lo in enumerate(range(0, len(items), self.batch_size), start=1):
                batch = items[lo : lo + self.batch_size]
                vectors = embedder.forward(batch)
                if tuple(vectors.shape) != (len(batch), embedder.dim):
                    raise EncoderError(
                        f"The {self.name} {modality} model returned vectors of shape "
                        f"{tuple(vectors.shape)} for {len(batch)} inputs; expected width "
                        f"{embedder.dim} from its config ({self.sources[embedder.part]})."
                    )
                vectors = vectors.to("cpu", torch.float64)
                norms = vectors.norm(dim=-1, keepdim=True)
                broken = ~(torch.isfinite(norms) & (norms > 0)).squeeze(-1)
                if bool(broken.any()):
                    item = lo + int(broken.nonzero()[0, 0])
                    raise EncoderError(
                        f"The {self.name} {modality} model returned a zero or non-finite vector "
                        f"for item {item}; it cannot be normalised. Check that "
                        f"{self.sources[embedder.part]} holds trained weights."
                    )
                out[lo : lo + len(batch)] = (vectors / norms).numpy()
                if batch_no % self.log_every == 0 or batch_no == n_batches:
                    done = lo + len(batch)
                    rate = done / max(time.perf_counter() - started, 1e-9)
                    log.info(
                        "%s: embedded %d/%d %ss (%.1f %ss/s)",
                        self.name,
                        done,
                        len(items),
                        modality,
                        rate,
                        modality,
                    )
        return out


def load_encoder(
    name: str,
    source: SourceArg = None,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    local_files_only: bool = True,
    log_every: int = 10,
) -> Encoder:
    """Load encoder `name` from its default hub name or from `source` (a hub name or a local
    directory; for roberta_efficientnet a {"text": ..., "image": ...} mapping, a missing key
    keeping its default).

    Runs on CUDA when available unless `device` says otherwise, in eval mode, in float32.
    `local_files_only` is on by default because our machines cannot reach the hub: a model not
    already on disk raises `EncoderUnavailable` instead of hanging on the network.
    """
    import torch

    spec = get_spec(name)
    if batch_size < 1 or log_every < 1:
        raise EncoderError(f"batch_size and log_every must be positive: {batch_size}, {log_every}")
    sources = _resolve_sources(spec, source)
    target = torch.device(device if device is not None else _default_device())
    embedders: dict[Modality, _Embedder] = {}
    revisions: dict[str, str] = {}
    for part, src in sources.items():
        loader = _LOADERS[spec.model_types[part]]
        for modality, embedder in loader(spec, part, src, target, local_files_only).items():
            embedders[modality] = embedder
        revisions[part] = _revision(src)
    encoder = Encoder(spec, sources, revisions, embedders, target, batch_size, log_every)
    log.info(
        "Loaded encoder %s from %s (revision %s) on %s",
        name,
        encoder.model_id,
        encoder.revision,
        target,
    )
    return encoder


def encoder_available(name: str, source: SourceArg = None) -> tuple[bool, str]:
    """Whether `name`'s weights are on this machine, and if not why, without loading them.

    Checks that each source's config loads from local files, holds the right kind of model and
    has a weights file next to it. An unknown name or a malformed `source` is a configuration
    mistake and raises instead of being reported as a skipped encoder.
    """
    from transformers import AutoConfig

    spec = get_spec(name)
    sources = _resolve_sources(spec, source)
    found = []
    for part, src in sources.items():
        what = _what(spec, part)
        if _is_missing_directory(src):
            return False, _unavailable_message(spec, part, src, "the directory does not exist")
        try:
            config = AutoConfig.from_pretrained(src, local_files_only=True)
        except (OSError, ValueError) as exc:
            reason = _reason(src, exc, local_files_only=True)
            return False, _unavailable_message(spec, part, src, reason)
        try:
            _check_model_type(spec, part, src, config.model_type)
        except EncoderError as exc:
            return False, str(exc)
        if not any(_local_file(src, weights) for weights in WEIGHT_FILES):
            reason = f"its config is there but no weights file ({', '.join(WEIGHT_FILES)})"
            return False, _unavailable_message(spec, part, src, reason)
        found.append(f"{what} at {src}")
    return True, f"{name}: found {'; '.join(found)}"


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_sources(spec: EncoderSpec, source: SourceArg) -> dict[str, str]:
    if source is None:
        return dict(spec.default_sources)
    if isinstance(source, Mapping):
        if spec.parts == (SINGLE,):
            raise EncoderError(
                f"The {spec.name} encoder loads from one source; pass a hub name or a directory, "
                f"not a mapping ({dict(source)})."
            )
        unknown = set(source) - set(spec.parts)
        if unknown:
            raise EncoderError(
                f"The {spec.name} encoder's sources are keyed by {', '.join(spec.parts)}; "
                f"got {', '.join(sorted(map(str, unknown)))}."
            )
        merged = {**spec.default_sources, **{k: _clean(v) for k, v in source.items()}}
        return {part: merged[part] for part in spec.parts}
    if spec.parts != (SINGLE,):
        raise EncoderError(
            f"The {spec.name} encoder pairs two models; pass a mapping "
            f"{{'text': ..., 'image': ...}} (defaults {dict(spec.default_sources)}), not "
            f"{os.fspath(source)!r}."
        )
    return {SINGLE: _clean(source)}


def _clean(source: SourcePath) -> str:
    text = os.fspath(source)
    return os.path.expanduser(text) if text.startswith("~") else text


def _looks_like_path(source: str) -> bool:
    """A local directory, or something that can only be a path: a hub name is "name" or
    "owner/name"."""
    return (
        os.path.isdir(source)
        or os.path.isabs(source)
        or source.startswith((".", "~"))
        or source.count("/") > 1
    )


def _is_missing_directory(source: str) -> bool:
    return _looks_like_path(source) and not os.path.isdir(source)


def _what(spec: EncoderSpec, part: str) -> str:
    return f"{spec.name} encoder" if part == SINGLE else f"{spec.name} encoder's {part} model"


def _unavailable_message(
    spec: EncoderSpec, part: str, source: str, reason: str, *, local_files_only: bool = True
) -> str:
    hub_name = spec.default_sources[part] if _looks_like_path(source) else source
    key = "source" if part == SINGLE else f"source['{part}']"
    how = (
        f"download it where the hub is reachable (e.g. `hf download {hub_name} --local-dir DIR`), "
        f"copy DIR to this machine and set the encoder's {key} to DIR"
    )
    if local_files_only:
        how += ", or allow downloads (local_files_only=False) on a machine that can reach the hub"
    return f"The {_what(spec, part)} is not available from {source!r}: {reason}. To use it, {how}."


def _reason(source: str, exc: BaseException, *, local_files_only: bool) -> str:
    """Why loading failed, in our terms: transformers says "couldn't connect" even when it was
    told not to try."""
    text = str(exc).strip()
    detail = (text.splitlines()[0] if text else type(exc).__name__).rstrip(".")
    if os.path.isdir(source):
        return detail
    if local_files_only:
        from huggingface_hub import constants

        return (
            f"it is not in the local hub cache ({constants.HF_HUB_CACHE}) and downloads are off "
            f"({detail})"
        )
    return f"it is not on disk and could not be downloaded ({detail})"


def _check_model_type(spec: EncoderSpec, part: str, source: str, model_type: str) -> None:
    expected = spec.model_types[part]
    if model_type != expected:
        raise EncoderError(
            f"{source!r} holds a {model_type!r} model but the {_what(spec, part)} needs a "
            f"{expected!r} model; point it at a {expected} checkpoint."
        )


def _local_file(source: str, filename: str) -> str | None:
    """The path of `filename` in a local directory or in the hub cache, if it is there."""
    if os.path.isdir(source):
        path = Path(source) / filename
        return str(path) if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source, filename)
    return cached if isinstance(cached, str) else None


def _revision(source: str) -> str:
    """The hub commit a cached model was loaded from, else a short hash of its config.json."""
    config = _local_file(source, "config.json")
    if config is None:
        return "unknown"
    path = Path(config)
    if path.parent.parent.name == "snapshots":
        return path.parent.name
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _load(
    spec: EncoderSpec,
    part: str,
    source: str,
    local_files_only: bool,
    load: Callable[[], Any],
) -> Any:
    """Run one `from_pretrained` call, turning "not there" into `EncoderUnavailable`."""
    if _is_missing_directory(source):
        reason = "the directory does not exist"
        raise EncoderUnavailable(
            _unavailable_message(spec, part, source, reason, local_files_only=local_files_only)
        )
    try:
        return load()
    except OSError as exc:
        reason = _reason(source, exc, local_files_only=local_files_only)
        raise EncoderUnavailable(
            _unavailable_message(spec, part, source, reason, local_files_only=local_files_only)
        ) from exc


def _pretrained(
    model_class: Any,
    spec: EncoderSpec,
    part: str,
    source: str,
    device: torch.device,
    local_files_only: bool,
) -> Any:
    """Config first (to check the model kind cheaply), then the weights, in eval mode."""
    import torch
    from transformers import AutoConfig

    config = _load(
        spec,
        part,
        source,
        local_files_only,
        lambda: AutoConfig.from_pretrained(source, local_files_only=local_files_only),
    )
    _check_model_type(spec, part, source, config.model_type)
    model = _load(
        spec,
        part,
        source,
        local_files_only,
        lambda: model_class.from_pretrained(
            source, config=config, dtype=torch.float32, local_files_only=local_files_only
        ),
    )
    return model.to(device).eval()


def _image_processor(spec: EncoderSpec, part: str, source: str, local_files_only: bool) -> Any:
    from transformers import AutoImageProcessor

    return _load(
        spec,
        part,
        source,
        local_files_only,
        lambda: AutoImageProcessor.from_pretrained(source, local_files_only=local_files_only),
    )


def _tokenizer(spec: EncoderSpec, part: str, source: str, local_files_only: bool) -> Any:
    from transformers import AutoTokenizer

    return _load(
        spec,
        part,
        source,
        local_files_only,
        lambda: AutoTokenizer.from_pretrained(source, local_files_only=local_files_only),
    )


def _pixels(processor: Any, images: list[Image.Image], device: torch.device) -> torch.Tensor:
    return processor(images=images, return_tensors="pt")["pixel_values"].to(device)


def _tokens(
    tokenizer: Any, texts: list[str], max_length: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Padded to the batch's longest text and cut at the model's context length."""
    encoded = tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {key: value.to(device) for key, value in encoded.items()}


def _load_mobilenet_v2(
    spec: EncoderSpec, part: str, source: str, device: torch.device, local_files_only: bool
) -> dict[Modality, _Embedder]:
    """MobileNetV2's `pooler_output`: the last feature map averaged over space."""
    from transformers import MobileNetV2Model

    model = _pretrained(MobileNetV2Model, spec, part, source, device, local_files_only)
    processor = _image_processor(spec, part, source, local_files_only)

    def forward(images: list[Image.Image]) -> torch.Tensor:
        return model(pixel_values=_pixels(processor, images, device)).pooler_output

    dim = model.conv_1x1.convolution.out_channels
    return {"image": _Embedder(part, dim, forward)}


def _load_efficientnet(
    spec: EncoderSpec, part: str, source: str, device: torch.device, local_files_only: bool
) -> dict[Modality, _Embedder]:
    """EfficientNet's `pooler_output`: the top convolution's features averaged over space."""
    from transformers import EfficientNetModel

    model = _pretrained(EfficientNetModel, spec, part, source, device, local_files_only)
    processor = _image_processor(spec, part, source, local_files_only)

    def forward(images: list[Image.Image]) -> torch.Tensor:
        return model(pixel_values=_pixels(processor, images, device)).pooler_output

    return {"image": _Embedder(part, model.config.hidden_dim, forward)}


def _load_roberta(
    spec: EncoderSpec, part: str, source: str, device: torch.device, local_files_only: bool
) -> dict[Modality, _Embedder]:
    """RoBERTa has no trained sentence head: the text vector is the mean of its last hidden
    states over real tokens (padding excluded by the attention mask)."""
    from transformers import RobertaModel

    model = _pretrained(RobertaModel, spec, part, source, device, local_files_only)
    tokenizer = _tokenizer(spec, part, source, local_files_only)
    # Positions start after the padding index, so the usable length is two short of the table.
    positions = model.config.max_position_embeddings - model.config.pad_token_id - 1
    max_length = min(tokenizer.model_max_length, positions)

    def forward(texts: list[str]) -> torch.Tensor:
        inputs = _tokens(tokenizer, texts, max_length, device)
        hidden = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    return {"text": _Embedder(part, model.config.hidden_size, forward)}


def _load_dual(
    spec: EncoderSpec, part: str, source: str, device: torch.device, local_files_only: bool
) -> dict[Modality, _Embedder]:
    """CLIP, FashionCLIP and ALIGN: the projected image and text embeddings, one shared space.

    `get_image_features` / `get_text_features` return a model output whose `pooler_output`
    holds the projected embedding (CLIP projects the pooled token; ALIGN's image embedding is
    its pooled vision features, its text embedding the projected [CLS] state).
    """
    from transformers import AlignModel, CLIPModel

    model_class = AlignModel if spec.model_types[part] == "align" else CLIPModel
    model = _pretrained(model_class, spec, part, source, device, local_files_only)
    processor = _image_processor(spec, part, source, local_files_only)
    tokenizer = _tokenizer(spec, part, source, local_files_only)
    max_length = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
    dim = model.config.projection_dim

    def images(batch: list[Image.Image]) -> torch.Tensor:
        pixels = _pixels(processor, batch, device)
        return model.get_image_features(pixel_values=pixels).pooler_output

    def texts(batch: list[str]) -> torch.Tensor:
        tokens = _tokens(tokenizer, batch, max_length, device)
        return model.get_text_features(**tokens).pooler_output

    return {"image": _Embedder(part, dim, images), "text": _Embedder(part, dim, texts)}


_LOADERS: dict[
    str, Callable[[EncoderSpec, str, str, torch.device, bool], dict[Modality, _Embedder]]
] = {
    "mobilenet_v2": _load_mobilenet_v2,
    "clip": _load_dual,
    "align": _load_dual,
    "roberta": _load_roberta,
    "efficientnet": _load_efficientnet,
}


def _flatten(by_part: Mapping[str, str]) -> str:
    if set(by_part) == {SINGLE}:
        return by_part[SINGLE]
    return "; ".join(f"{part}={value}" for part, value in by_part.items())

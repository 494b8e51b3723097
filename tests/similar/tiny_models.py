"""Tiny, randomly initialised versions of the seed's encoders, saved the way the hub stores them.

Pretrained weights cannot be downloaded here, so each builder takes the real architecture's
config class with small widths and depths, saves the model with `save_pretrained` next to the
image processor and/or tokenizer it needs, and returns the directory. `load_encoder(name, dir)`
then goes through the same `from_pretrained` code path a hub checkpoint takes. The tokenizers
are real BPE / WordPiece tokenizers built from a hand-written vocabulary: byte-level BPE needs
every byte symbol in its vocabulary to encode arbitrary text, WordPiece falls back to letters.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import BertTokenizer, CLIPTokenizer, RobertaTokenizer

IMAGE_SIZE = 32
MAX_TOKENS = 16
# Wider than the configs' default 0.02: at that scale a narrow random conv net's activations
# shrink towards zero and ALIGN's [CLS] state barely depends on the text; trained weights
# are not like that.
INIT_RANGE = 0.3

# A few merges so that common words become single tokens, as they do with a real vocabulary.
WORDS = ["red", "blue", "green", "dress", "shirt", "boots", "leather", "cotton", "denim"]


def _byte_symbols() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def _bpe_merges(words: list[str], suffix: str = "", prefix: str = "") -> list[tuple[str, str]]:
    """Left-to-right merges that build each word (with its word-boundary marker) from bytes."""
    merges: list[tuple[str, str]] = []
    for word in words:
        symbols = [*word[:-1], word[-1] + suffix]
        if prefix:
            merges.append((prefix, word[0]))
            symbols[0] = prefix + symbols[0]
        built = symbols[0]
        for symbol in symbols[1:]:
            merges.append((built, symbol))
            built += symbol
    return list(dict.fromkeys(merges))


def _vocab(tokens: list[str], merges: list[tuple[str, str]]) -> dict[str, int]:
    ordered = list(dict.fromkeys([*tokens, *(a + b for a, b in merges)]))
    return {token: i for i, token in enumerate(ordered)}


def clip_tokenizer() -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    merges = _bpe_merges(WORDS, suffix="</w>")
    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab = _vocab([*specials, *symbols, *(s + "</w>" for s in symbols)], merges)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def roberta_tokenizer() -> RobertaTokenizer:
    from transformers import RobertaTokenizer

    symbols = _byte_symbols()
    merges = _bpe_merges(WORDS, prefix="Ġ")
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = _vocab([*specials, *symbols, *("Ġ" + s for s in symbols)], merges)
    return RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def bert_tokenizer() -> BertTokenizer:
    from transformers import BertTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *letters]
    tokens += ["##" + c for c in letters]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return BertTokenizer(vocab=vocab, model_max_length=MAX_TOKENS)


def _small_efficientnet_kwargs() -> dict[str, object]:
    """Two stages of one block each, narrow channels: the real block types, seconds to build."""
    return {
        "image_size": IMAGE_SIZE,
        "depth_coefficient": 1.0,
        "kernel_sizes": [3, 3],
        "in_channels": [32, 16],
        "out_channels": [16, 16],
        "strides": [1, 2],
        "num_block_repeats": [1, 1],
        "expand_ratios": [1, 2],
        "drop_connect_rate": 0.0,
        "initializer_range": INIT_RANGE,
    }


def save_mobilenet_v2(out: Path) -> Path:
    from transformers import MobileNetV2Config, MobileNetV2ImageProcessorPil, MobileNetV2Model

    config = MobileNetV2Config(
        depth_multiplier=0.35,
        image_size=IMAGE_SIZE,
        finegrained_output=False,
        initializer_range=INIT_RANGE,
    )
    _save(MobileNetV2Model(config), out)
    size = {"shortest_edge": IMAGE_SIZE}
    crop = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    MobileNetV2ImageProcessorPil(size=size, crop_size=crop).save_pretrained(out)
    return out


def save_clip(out: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    tokenizer = clip_tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": MAX_TOKENS,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    _save(CLIPModel(config), out)
    size = {"shortest_edge": IMAGE_SIZE}
    crop = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    CLIPImageProcessorPil(size=size, crop_size=crop).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def save_align(out: Path) -> Path:
    from transformers import AlignConfig, AlignModel, EfficientNetImageProcessorPil

    tokenizer = bert_tokenizer()
    config = AlignConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": MAX_TOKENS,
            "initializer_range": INIT_RANGE,
        },
        # The image embedding is the pooled last stage, so its width must equal projection_dim.
        vision_config={**_small_efficientnet_kwargs(), "width_coefficient": 1.0, "hidden_dim": 64},
        projection_dim=16,
        initializer_range=INIT_RANGE,
    )
    _save(AlignModel(config), out)
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    EfficientNetImageProcessorPil(size=size, crop_size=size).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def save_roberta(out: Path) -> Path:
    from transformers import RobertaConfig, RobertaModel

    tokenizer = roberta_tokenizer()
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS + 2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    _save(RobertaModel(config), out)
    tokenizer.save_pretrained(out)
    return out


def save_efficientnet(out: Path) -> Path:
    from transformers import EfficientNetConfig, EfficientNetImageProcessorPil, EfficientNetModel

    # The top convolution has round_filters(1280) channels; hidden_dim must match it.
    config = EfficientNetConfig(
        **_small_efficientnet_kwargs(), width_coefficient=0.05, hidden_dim=64
    )
    _save(EfficientNetModel(config), out)
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    EfficientNetImageProcessorPil(size=size, crop_size=size).save_pretrained(out)
    return out


def _save(model: torch.nn.Module, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # type: ignore[operator]

"""A1111 prompt syntax → text-encoder embeddings, as the WebUI computes them.

Ports the semantics of A1111's `modules/prompt_parser.parse_prompt_attention` (emphasis `(a:1.3)`, `(a)`,
`[a]`, escaped brackets, `BREAK`), `modules/extra_networks` (`<lora:name:weight>` is removed from the text
and returned) and `modules/sd_hijack_clip` (75-token chunks, each wrapped in BOS/EOS and encoded on its
own, emphasis multiplied into the embeddings then the chunk's mean restored, chunks concatenated; CLIP
skip = `CLIP_stop_at_last_layers`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from aws_extension.engine.base import EngineError

CHUNK_LENGTH = 75  # tokens per chunk, without BOS and EOS
# A1111's `comma_padding_backtrack` default: a chunk that ends within this many tokens after a comma is
# cut at the comma, and the rest moves to the next chunk.
COMMA_PADDING_BACKTRACK = 20
_MIN_MEAN_FOR_RESTORE = 1e-4  # relative to the mean magnitude of the embeddings

_RE_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_RE_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_RE_AND = re.compile(r"\bAND\b")
# Prompt editing `[from:to:when]`, `[to:when]` and alternation `[a|b]` (brackets not escaped).
_RE_SCHEDULING = re.compile(r"(?<!\\)\[[^\[\]]*(?<!\\)[:|][^\[\]]*(?<!\\)\]")

_ROUND_BRACKET_MULTIPLIER = 1.1
_SQUARE_BRACKET_MULTIPLIER = 1 / 1.1


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split `text` into (text, weight) runs; `("BREAK", -1)` marks a BREAK. Same output as A1111's."""
    runs: list[list[Any]] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for position in range(start, len(runs)):
            runs[position][1] *= multiplier

    for match in _RE_ATTENTION.finditer(text):
        piece = match.group(0)
        weight = match.group(1)
        if piece.startswith("\\"):
            runs.append([piece[1:], 1.0])
        elif piece == "(":
            round_brackets.append(len(runs))
        elif piece == "[":
            square_brackets.append(len(runs))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif piece == ")" and round_brackets:
            multiply_range(round_brackets.pop(), _ROUND_BRACKET_MULTIPLIER)
        elif piece == "]" and square_brackets:
            multiply_range(square_brackets.pop(), _SQUARE_BRACKET_MULTIPLIER)
        else:
            for index, part in enumerate(_RE_BREAK.split(piece)):
                if index > 0:
                    runs.append(["BREAK", -1])
                runs.append([part, 1.0])

    # Unclosed brackets apply to the end of the prompt.
    for position in round_brackets:
        multiply_range(position, _ROUND_BRACKET_MULTIPLIER)
    for position in square_brackets:
        multiply_range(position, _SQUARE_BRACKET_MULTIPLIER)

    if not runs:
        runs = [["", 1.0]]
    merged = 0
    while merged + 1 < len(runs):
        if runs[merged][1] == runs[merged + 1][1]:
            runs[merged][0] += runs[merged + 1][0]
            runs.pop(merged + 1)
        else:
            merged += 1
    return [(text_run, float(weight)) for text_run, weight in runs]


@dataclass(frozen=True)
class LoraCall:
    """`<lora:name:te_weight[:unet_weight]>` (or `<lyco:...>`) found in a prompt."""

    name: str
    text_encoder_weight: float
    unet_weight: float


def extract_extra_networks(prompt: str, field_name: str = "prompt") -> tuple[str, list[LoraCall]]:
    """Remove every `<type:args>` from `prompt`; return the remaining text and the LoRA calls.

    A1111 argument forms: `<lora:name>`, `<lora:name:w>`, `<lora:name:te:unet>`, `<lora:name:te=w:unet=w>`.
    Other network types (hypernet, ...) are refused: this engine cannot apply them.
    """
    calls: list[LoraCall] = []

    def take(match: re.Match[str]) -> str:
        kind, args_text = match.group(1), match.group(2)
        if kind not in ("lora", "lyco"):
            raise EngineError(f"{field_name}: extra network <{kind}:...> is not supported (only <lora:...>)", field_name)
        name, *args = args_text.split(":")
        positional = [a for a in args if "=" not in a]
        named = dict(a.split("=", 1) for a in args if "=" in a)
        try:
            te_weight = float(named.get("te", positional[0] if positional else 1.0))
            unet_weight = float(named.get("unet", positional[1] if len(positional) > 1 else te_weight))
        except ValueError:
            raise EngineError(f"{field_name}: bad weight in <{kind}:{args_text}>", field_name) from None
        calls.append(LoraCall(name=name.strip(), text_encoder_weight=te_weight, unet_weight=unet_weight))
        return ""

    return _RE_EXTRA_NETWORK.sub(take, prompt), calls


def check_supported_syntax(prompt: str, field_name: str, composable: bool = True) -> None:
    """Refuse A1111 prompt syntax this engine does not implement, rather than treat it as plain text."""
    if composable and _RE_AND.search(prompt):
        raise EngineError(f"{field_name}: composable prompts (AND) are not supported", field_name)
    scheduled = _RE_SCHEDULING.search(prompt)
    if scheduled:
        raise EngineError(
            f"{field_name}: prompt editing/alternation {scheduled.group(0)!r} is not supported", field_name
        )


@dataclass
class PromptChunk:
    """77 token ids (BOS, 75 tokens, EOS) and the emphasis multiplier of each."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)


def tokenize_into_chunks(text: str, tokenizer: Any, textual_inversion: Any | None = None) -> list[PromptChunk]:
    """A1111's `tokenize_line`: chunks of 75 tokens; BREAK and commas near a chunk's end start a new one.

    `textual_inversion` is the pipeline (a `TextualInversionLoaderMixin`): multi-vector embedding tokens are
    expanded with its `maybe_convert_prompt`, as diffusers does.
    """
    runs = parse_prompt_attention(text)
    texts = [run_text for run_text, _ in runs]
    if textual_inversion is not None:
        texts = [textual_inversion.maybe_convert_prompt(t, tokenizer) for t in texts]
    tokenized = tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = eos if tokenizer.pad_token_id is None else tokenizer.pad_token_id  # SD 1.x: the EOS token
    comma = tokenizer.convert_tokens_to_ids(",</w>")

    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    last_comma = -1

    def next_chunk() -> None:
        nonlocal chunk, last_comma
        missing = CHUNK_LENGTH - len(chunk.tokens)
        chunk.tokens = [bos, *chunk.tokens, *([pad] * missing), eos]
        chunk.multipliers = [1.0, *chunk.multipliers, *([1.0] * missing), 1.0]
        chunks.append(chunk)
        chunk = PromptChunk()
        last_comma = -1

    embedding_lengths = _multi_vector_embedding_lengths(tokenizer)
    for tokens, (run_text, weight) in zip(tokenized, runs):
        if run_text == "BREAK" and weight == -1:
            next_chunk()
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma:
                last_comma = len(chunk.tokens)
            elif (
                len(chunk.tokens) == CHUNK_LENGTH
                and last_comma != -1
                and len(chunk.tokens) - last_comma <= COMMA_PADDING_BACKTRACK
            ):
                cut = last_comma + 1
                moved_tokens, moved_multipliers = chunk.tokens[cut:], chunk.multipliers[cut:]
                chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                next_chunk()
                chunk.tokens, chunk.multipliers = moved_tokens, moved_multipliers
            if len(chunk.tokens) == CHUNK_LENGTH:
                next_chunk()
            # An embedding's vectors stay together in one chunk.
            length = embedding_lengths.get(token, 1)
            if len(chunk.tokens) + length > CHUNK_LENGTH:
                next_chunk()
            chunk.tokens += tokens[position:position + length]
            chunk.multipliers += [weight] * length
            position += length
    if chunk.tokens or not chunks:
        next_chunk()
    return chunks


def _multi_vector_embedding_lengths(tokenizer: Any) -> dict[int, int]:
    """First token id → vector count of each multi-vector embedding (diffusers adds `name`, `name_1`, ...)."""
    added = tokenizer.get_added_vocab()
    lengths = {}
    for token, token_id in added.items():
        count = 1
        while f"{token}_{count}" in added:
            count += 1
        if count > 1:
            lengths[token_id] = count
    return lengths


def encode_chunks(chunks: list[PromptChunk], text_encoder: Any, clip_skip: int = 1) -> torch.Tensor:
    """Encode each chunk, apply emphasis with A1111's mean restoration, concatenate: [1, 77·n, dim]."""
    device = text_encoder.device
    final_layer_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    encoded = []
    for chunk in chunks:
        input_ids = torch.tensor([chunk.tokens], device=device)
        if clip_skip > 1:
            hidden_states = text_encoder(input_ids, output_hidden_states=True).hidden_states
            z = final_layer_norm(hidden_states[-clip_skip])
        else:
            z = text_encoder(input_ids).last_hidden_state
        if any(multiplier != 1.0 for multiplier in chunk.multipliers):
            multipliers = torch.tensor([chunk.multipliers], device=device, dtype=z.dtype)
            original_mean = z.mean()
            z = z * multipliers.unsqueeze(-1)
            new_mean = z.mean()
            # A1111 divides unconditionally; a mean of ~0 (an untrained final layer norm, as in the tiny
            # test model) would turn the ratio into noise or NaN, so it is skipped there.
            if new_mean.abs() > _MIN_MEAN_FOR_RESTORE * z.abs().mean():
                z = z * (original_mean / new_mean)
        encoded.append(z)
    return torch.cat(encoded, dim=1)


@torch.no_grad()
def encode_prompt_pair(
    prompt: str, negative_prompt: str, pipe: Any, clip_skip: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """prompt_embeds and negative_prompt_embeds of the same length (the shorter padded with empty chunks)."""
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    positive = encode_chunks(tokenize_into_chunks(prompt, tokenizer, pipe), text_encoder, clip_skip)
    negative = encode_chunks(tokenize_into_chunks(negative_prompt, tokenizer, pipe), text_encoder, clip_skip)
    if positive.shape[1] != negative.shape[1]:
        empty = encode_chunks(tokenize_into_chunks("", tokenizer), text_encoder, clip_skip)
        longest = max(positive.shape[1], negative.shape[1])
        positive, negative = (
            torch.cat([z, empty.repeat(1, (longest - z.shape[1]) // empty.shape[1], 1)], dim=1)
            for z in (positive, negative)
        )
    return positive, negative

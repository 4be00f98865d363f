"""A1111 prompt syntax → text-encoder embeddings, as the WebUI computes them.

Ports the semantics of A1111's `modules/prompt_parser.parse_prompt_attention` (emphasis `(a:1.3)`, `(a)`,
`[a]`, escaped brackets, `BREAK`), `modules/extra_networks` (`<lora:name:weight>` is removed from the text
and returned) and `modules/sd_hijack_clip` (75-token chunks, each wrapped in BOS/EOS and encoded on its
own, emphasis multiplied into the embeddings then the chunk's mean restored, chunks concatenated; CLIP
skip = `CLIP_stop_at_last_layers`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from aws_extension.engine.base import EngineError
from aws_extension.vocabulary import LoraCall, PromptSyntaxError, lora_call, split_extra_networks

CHUNK_LENGTH = 75  # tokens per chunk, without BOS and EOS
# A1111's `comma_padding_backtrack` default: a chunk that ends within this many tokens after a comma is
# cut at the comma, and the rest moves to the next chunk.
COMMA_PADDING_BACKTRACK = 20
_MIN_MEAN_FOR_RESTORE = 1e-4  # relative to the mean magnitude of the embeddings
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")  # A1111 1.10's sd_emphasis options


@dataclass(frozen=True)
class Emphasis:
    """A1111's `emphasis` and `comma_padding_backtrack` settings. "Original": weights multiplied into the
    embeddings, then each chunk's mean restored; "No norm": without the restoration; "Ignore": weights
    parsed but not applied; "None": no parsing at all (brackets and BREAK are plain text)."""

    mode: str = "Original"
    comma_padding_backtrack: int = COMMA_PADDING_BACKTRACK

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
_RE_AND = re.compile(r"\bAND\b")

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


def extract_extra_networks(prompt: str, field_name: str = "prompt") -> tuple[str, list[LoraCall]]:
    """Remove every `<kind:args>` from `prompt` (A1111's rule, `vocabulary.split_extra_networks`); return the
    remaining text and the LoRA calls (`<lora:...>`, `<lyco:...>`, argument forms of `vocabulary.lora_call`).

    Other network kinds (hypernet, ...) are refused: this engine cannot apply them.
    """
    text, calls = split_extra_networks(prompt)
    for call in calls:
        if not call.is_lora:
            raise EngineError(f"{field_name}: extra network <{call.kind}:...> is not supported (only <lora:...>)",
                              field_name)
    try:
        return text, [lora_call(call) for call in calls]
    except PromptSyntaxError as exc:
        raise EngineError(f"{field_name}: {exc}", field_name) from None


def check_supported_syntax(prompt: str, field_name: str) -> None:
    """Refuse A1111 prompt syntax this engine does not implement, rather than treat it as plain text."""
    if _RE_AND.search(prompt):
        raise EngineError(f"{field_name}: composable prompts (AND) are not supported", field_name)


# --- prompt editing [from:to:when] and alternation [a|b] (A1111's prompt_parser schedules) ------------


@dataclass
class _Scheduled:
    before: list[Any]
    after: list[Any]
    when: str


@dataclass
class _Alternate:
    options: list[list[Any]]


_RE_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _parse_schedule_tree(text: str, position: int = 0, closing: str = "") -> tuple[list[Any], int]:
    """Text → nodes (str, _Scheduled, _Alternate) up to `closing` (or the end); brackets that do not
    form prompt editing or alternation are kept as text (they are emphasis, parsed later)."""
    nodes: list[Any] = []
    while position < len(text):
        char = text[position]
        if char == "\\":
            nodes.append(text[position:position + 2])
            position += 2
        elif closing and char in closing:
            return nodes, position
        elif char == "(":
            inner, end = _parse_schedule_tree(text, position + 1, ")")
            closed = end < len(text)
            nodes += ["(", *inner, ")" if closed else ""]
            position = end + 1
        elif char == "[":
            group, end = _parse_bracket_group(text, position + 1)
            nodes += group
            position = end
        else:
            nodes.append(char)
            position += 1
    return nodes, position


def _parse_bracket_group(text: str, position: int) -> tuple[list[Any], int]:
    """After a `[`: the nodes of the group and the position after its `]`."""
    segments: list[list[Any]] = []
    separators: list[str] = []
    while True:
        segment, position = _parse_schedule_tree(text, position, ":|]")
        segments.append(segment)
        if position >= len(text):  # never closed: the "[" is plain text
            return ["[", *_join_segments(segments, separators)], position
        if text[position] == "]":
            break
        separators.append(text[position])
        position += 1
    position += 1  # the "]"
    if separators and all(separator == "|" for separator in separators):
        return [_Alternate(segments)], position
    # Prompt editing splits on ":" only; a "|" inside its parts is text (as in A1111).
    parts: list[list[Any]] = [segments[0]]
    for separator, segment in zip(separators, segments[1:]):
        if separator == ":":
            parts.append(segment)
        else:
            parts[-1] = [*parts[-1], "|", *segment]
    when = parts[-1]
    if len(parts) in (2, 3) and all(isinstance(node, str) for node in when) and _RE_NUMBER.fullmatch("".join(when)):
        before = parts[0] if len(parts) == 3 else []
        return [_Scheduled(before, parts[-2], "".join(when).strip())], position
    # Emphasis `[text]` (or a `:` inside one): text, as A1111's grammar keeps it.
    return ["[", *_join_segments(segments, separators), "]"], position


def _join_segments(segments: list[list[Any]], separators: list[str]) -> list[Any]:
    joined: list[Any] = []
    for index, segment in enumerate(segments):
        joined += segment
        if index < len(separators):
            joined.append(separators[index])
    return joined


def _schedule_steps(nodes: list[Any], steps: int, hires_base_steps: int | None) -> set[int]:
    found = {steps}
    for node in nodes:
        if isinstance(node, _Scheduled):
            node_step = _when_step(node.when, steps, hires_base_steps)
            if node_step >= 1:
                found.add(node_step)
            found |= _schedule_steps(node.before, steps, hires_base_steps)
            found |= _schedule_steps(node.after, steps, hires_base_steps)
        elif isinstance(node, _Alternate):
            found |= set(range(1, steps + 1))
            for option in node.options:
                found |= _schedule_steps(option, steps, hires_base_steps)
    return found


def _when_step(when: str, steps: int, hires_base_steps: int | None) -> int:
    """A1111: a fraction (has a ".") is of the pass's steps, else a step number; in the hires pass both
    count from the start of the first pass."""
    value = float(when)
    if "." in when:
        value = (value - (1.0 if hires_base_steps is not None else 0.0)) * steps
    else:
        value -= hires_base_steps or 0
    return min(steps, int(value))


def _text_at_step(nodes: list[Any], step: int, steps: int, hires_base_steps: int | None) -> str:
    parts = []
    for node in nodes:
        if isinstance(node, _Scheduled):
            chosen = node.before if step <= _when_step(node.when, steps, hires_base_steps) else node.after
            parts.append(_text_at_step(chosen, step, steps, hires_base_steps))
        elif isinstance(node, _Alternate):
            parts.append(_text_at_step(node.options[(step - 1) % len(node.options)], step, steps, hires_base_steps))
        else:
            parts.append(node)
    return "".join(parts)


def prompt_schedule(prompt: str, steps: int, hires_base_steps: int | None = None) -> list[tuple[int, str]]:
    """A1111's `get_learned_conditioning_prompt_schedules` for one prompt: [(last step, prompt text)].

    `[from:to:when]` switches after step `when` (a number < 1 with a "." is a fraction of the steps),
    `[to:when]` / `[from::when]` add/remove text, `[a|b]` alternates every step. For the hires pass,
    `hires_base_steps` is the first pass's step count.
    """
    nodes, _ = _parse_schedule_tree(prompt)
    if not any(isinstance(node, (_Scheduled, _Alternate)) for node in _walk(nodes)):
        return [(steps, prompt)]
    return [(step, _text_at_step(nodes, step, steps, hires_base_steps))
            for step in sorted(_schedule_steps(nodes, steps, hires_base_steps))]


def _walk(nodes: list[Any]) -> Iterator[Any]:
    for node in nodes:
        yield node
        if isinstance(node, _Scheduled):
            yield from _walk(node.before)
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            for option in node.options:
                yield from _walk(option)


@dataclass
class PromptChunk:
    """77 token ids (BOS, 75 tokens, EOS) and the emphasis multiplier of each."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)


def tokenize_into_chunks(text: str, tokenizer: Any, textual_inversion: Any | None = None,
                         emphasis: Emphasis = Emphasis()) -> list[PromptChunk]:
    """A1111's `tokenize_line`: chunks of 75 tokens; BREAK and commas near a chunk's end start a new one.

    `textual_inversion` is the pipeline (a `TextualInversionLoaderMixin`): multi-vector embedding tokens are
    expanded with its `maybe_convert_prompt`, as diffusers does.
    """
    runs = parse_prompt_attention(text) if emphasis.mode != "None" else [(text, 1.0)]
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
                emphasis.comma_padding_backtrack != 0
                and len(chunk.tokens) == CHUNK_LENGTH
                and last_comma != -1
                and len(chunk.tokens) - last_comma <= emphasis.comma_padding_backtrack
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


def encode_chunks(chunks: list[PromptChunk], text_encoder: Any, clip_skip: int = 1,
                  emphasis: Emphasis = Emphasis()) -> torch.Tensor:
    """Encode each chunk, apply emphasis with A1111's mean restoration, concatenate: [1, 77·n, dim]."""
    layers = text_encoder.config.num_hidden_layers
    if clip_skip > layers:
        raise EngineError(
            f"override_settings.CLIP_stop_at_last_layers: {clip_skip} is more than this model's text encoder "
            f"has layers ({layers})", "override_settings.CLIP_stop_at_last_layers",
        )
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
        if emphasis.mode in ("Original", "No norm") and any(multiplier != 1.0 for multiplier in chunk.multipliers):
            multipliers = torch.tensor([chunk.multipliers], device=device, dtype=z.dtype)
            original_mean = z.mean()
            z = z * multipliers.unsqueeze(-1)
            new_mean = z.mean()
            if emphasis.mode == "No norm":
                encoded.append(z)
                continue
            # A1111 divides unconditionally; a mean of ~0 (an untrained final layer norm, as in the tiny
            # test model) would turn the ratio into noise or NaN, so it is skipped there.
            if new_mean.abs() > _MIN_MEAN_FOR_RESTORE * z.abs().mean():
                z = z * (original_mean / new_mean)
        encoded.append(z)
    return torch.cat(encoded, dim=1)


def _pad_to_same_length(embeddings: list[torch.Tensor], empty: torch.Tensor) -> list[torch.Tensor]:
    """Append encoded empty prompts so every tensor has as many chunks as the longest (diffusers batches
    cond and uncond together, so they must have the same length; A1111's `pad_cond`)."""
    longest = max(z.shape[1] for z in embeddings)
    return [torch.cat([z, empty.repeat(1, (longest - z.shape[1]) // empty.shape[1], 1)], dim=1) for z in embeddings]


@torch.no_grad()
def encode_prompt_pair(
    prompt: str, negative_prompt: str, pipe: Any, clip_skip: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """prompt_embeds and negative_prompt_embeds of the same length (the shorter padded with empty chunks)."""
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    positive = encode_chunks(tokenize_into_chunks(prompt, tokenizer, pipe), text_encoder, clip_skip)
    negative = encode_chunks(tokenize_into_chunks(negative_prompt, tokenizer, pipe), text_encoder, clip_skip)
    if positive.shape[1] == negative.shape[1]:
        return positive, negative
    empty = encode_chunks(tokenize_into_chunks("", tokenizer), text_encoder, clip_skip)
    positive, negative = _pad_to_same_length([positive, negative], empty)
    return positive, negative


@dataclass
class ScheduledConditioning:
    """Prompt and negative prompt embeddings over the steps of one pass: [(last step, embeddings)]."""

    positive: list[tuple[int, torch.Tensor]]
    negative: list[tuple[int, torch.Tensor]]
    empty: torch.Tensor | None = None  # the encoded empty prompt (one chunk), for `padded`

    @property
    def changes_during_sampling(self) -> bool:
        return len(self.positive) > 1 or len(self.negative) > 1

    def at_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The embeddings at A1111's step `step` (`reconstruct_cond_batch`: the model calls of the pass before
        this one, so the first call is 0): the first entry whose last step is >= `step`; past them, the last."""
        return _entry_at(self.positive, step), _entry_at(self.negative, step)

    def padded(self) -> ScheduledConditioning:
        """Every tensor as long as the longest, with empty chunks appended (A1111's "pad_cond_uncond"): for
        diffusers' pipelines, which batch cond and uncond. A1111 by default does not pad: it runs a cond and
        an uncond of different lengths through the UNet separately (engine.k_pass does the same)."""
        everything = [z for _, z in self.positive + self.negative]
        if len({z.shape[1] for z in everything}) == 1 or self.empty is None:
            return self
        padded = iter(_pad_to_same_length(everything, self.empty))
        return ScheduledConditioning([(step, next(padded)) for step, _ in self.positive],
                                     [(step, next(padded)) for step, _ in self.negative], self.empty)


def _entry_at(schedule: list[tuple[int, torch.Tensor]], step: int) -> torch.Tensor:
    return next((z for last_step, z in schedule if step <= last_step), schedule[-1][1])


@torch.no_grad()
def encode_prompt_schedules(
    prompt: str, negative_prompt: str, pipe: Any, steps: int, clip_skip: int = 1,
    hires_base_steps: int | None = None, encoded: dict[str, torch.Tensor] | None = None,
    emphasis: Emphasis = Emphasis(),
) -> ScheduledConditioning:
    """Embeddings of both prompts for each step, with prompt editing and alternation (`prompt_schedule`).

    The tensors keep their lengths (`ScheduledConditioning.padded` evens them). `encoded` caches encodings by text across calls of one job.
    """
    encoded = {} if encoded is None else encoded

    def encode(text: str) -> torch.Tensor:
        if text not in encoded:
            chunks = tokenize_into_chunks(text, pipe.tokenizer, pipe, emphasis)
            encoded[text] = encode_chunks(chunks, pipe.text_encoder, clip_skip, emphasis)
        return encoded[text]

    positive = [(step, encode(text)) for step, text in prompt_schedule(prompt, steps, hires_base_steps)]
    negative = [(step, encode(text)) for step, text in prompt_schedule(negative_prompt, steps, hires_base_steps)]
    lengths = {z.shape[1] for _, z in positive + negative}
    return ScheduledConditioning(positive, negative, encode("") if len(lengths) > 1 else None)

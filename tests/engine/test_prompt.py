"""A1111 prompt syntax: attention parsing, extra networks, 75-token chunks, embeddings with emphasis."""

from __future__ import annotations

import copy

import pytest
import torch

from aws_extension.engine.base import EngineError
from aws_extension.engine.prompt import (
    CHUNK_LENGTH,
    Emphasis,
    ScheduledConditioning,
    check_supported_syntax,
    encode_chunks,
    encode_prompt_pair,
    encode_prompt_schedules,
    extract_extra_networks,
    parse_prompt_attention,
    prompt_schedule,
    tokenize_into_chunks,
)
from aws_extension.vocabulary import LoraCall

BOS, EOS = 49406, 49407


def _close(runs: list[tuple[str, float]], expected: list[tuple[str, float]]) -> bool:
    return len(runs) == len(expected) and all(
        text == want_text and weight == pytest.approx(want_weight)
        for (text, weight), (want_text, want_weight) in zip(runs, expected)
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [  # the examples of A1111's parse_prompt_attention docstring
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
             (", sun, ", 1.1), ("sky", 1.4641), (".", 1.1)],
        ),
        ("[faint]", [("faint", 1 / 1.1)]),
        ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_parse_prompt_attention_matches_a1111(text: str, expected: list[tuple[str, float]]) -> None:
    assert _close(parse_prompt_attention(text), expected), parse_prompt_attention(text)


def test_extra_networks_are_removed_and_returned() -> None:
    text, calls = extract_extra_networks("a cat <lora:tiny-lora:0.5>, <lyco:other:0.3:0.7> sitting <lora:x>")
    assert text == "a cat ,  sitting "
    assert calls == [LoraCall("tiny-lora", 0.5, 0.5), LoraCall("other", 0.3, 0.7), LoraCall("x", 1.0, 1.0)]
    _, named = extract_extra_networks("<lora:n:te=0.2:unet=0.9>")
    assert named == [LoraCall("n", 0.2, 0.9)]


@pytest.mark.parametrize("bad", ["<hypernet:h:1>", "<lora:n:abc>"])
def test_unsupported_extra_networks_are_refused(bad: str) -> None:
    with pytest.raises(EngineError, match="^prompt"):
        extract_extra_networks(f"a {bad}")


def test_composable_prompts_are_refused() -> None:
    with pytest.raises(EngineError, match="^prompt"):
        check_supported_syntax("a cat AND a dog", "prompt")
    check_supported_syntax("a [faint] (bold:1.2) [cat:dog:0.5] [a|b] ANDROID cat", "prompt")


def _alternating(first: str, second: str, period: int = 2) -> list[tuple[int, str]]:
    return [(step, first if step % period == 1 else second) for step in range(1, 11)]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [  # the examples of A1111's get_learned_conditioning_prompt_schedules docstring, 10 steps
        ("test", [(10, "test")]),
        ("a [b:3]", [(3, "a "), (10, "a b")]),
        ("a [b: 3]", [(3, "a "), (10, "a b")]),
        ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
        ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
        ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
        ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
        ("a [unbalanced", [(10, "a [unbalanced")]),
        ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
        ("a [{b|d{:.5] c", [(5, "a  c"), (10, "a {b|d{ c")]),
        ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
        ("[a|(b:1.1)]", _alternating("a", "(b:1.1)")),
        ("[fe|]male", _alternating("female", "male")),
        ("[fe|||]male", [(step, "female" if step % 4 == 1 else "male") for step in range(1, 11)]),
    ],
)
def test_prompt_schedule_matches_a1111(prompt: str, expected: list[tuple[int, str]]) -> None:
    assert prompt_schedule(prompt, 10) == expected


def test_hires_prompt_schedule_counts_from_the_first_pass() -> None:
    assert prompt_schedule("a [b:.5] c", 10, hires_base_steps=10) == [(10, "a b c")]
    assert prompt_schedule("a [b:1.5] c", 10, hires_base_steps=10) == [(5, "a  c"), (10, "a b c")]
    assert prompt_schedule("a [b:15] c", 10, hires_base_steps=10) == [(5, "a  c"), (10, "a b c")]


@pytest.fixture(scope="module")
def tokenizer():
    from aws_extension.engine.checkpoints import load_tokenizer

    return load_tokenizer()


def test_short_prompt_is_one_padded_chunk(tokenizer) -> None:
    (chunk,) = tokenize_into_chunks("a photo of a cat", tokenizer)
    assert chunk.tokens[:7] == [BOS, 320, 1125, 539, 320, 2368, EOS]
    assert chunk.tokens[7:] == [EOS] * 70 and len(chunk.tokens) == CHUNK_LENGTH + 2
    assert chunk.multipliers == [1.0] * 77


def test_emphasis_multipliers_follow_the_tokens(tokenizer) -> None:
    (chunk,) = tokenize_into_chunks("a (cat:1.5) [dog]", tokenizer)
    assert chunk.multipliers[1:4] == pytest.approx([1.0, 1.5, 1 / 1.1])


def test_long_prompt_and_break_make_more_chunks(tokenizer) -> None:
    long_chunks = tokenize_into_chunks(" ".join(["cat"] * 100), tokenizer)
    assert len(long_chunks) == 2
    assert long_chunks[0].tokens[1:76] == [2368] * 75 and long_chunks[1].tokens[1:26] == [2368] * 25
    broken = tokenize_into_chunks("a cat BREAK a dog", tokenizer)
    assert len(broken) == 2
    assert broken[1].tokens[:4] == [BOS, 320, 1929, EOS]


def test_chunk_ending_shortly_after_a_comma_moves_the_tail(tokenizer) -> None:
    # 70 tokens, a comma, then 10 more: the 10 tokens after the comma start the second chunk.
    chunks = tokenize_into_chunks(" ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10), tokenizer)
    assert len(chunks) == 2
    assert chunks[0].tokens[71] == tokenizer.convert_tokens_to_ids(",</w>")
    assert chunks[1].tokens[1:11] == [1929] * 10


@pytest.fixture(scope="module")
def pipe(tiny_models_dir):
    from aws_extension.engine.checkpoints import load_checkpoint_pipeline

    return load_checkpoint_pipeline(tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors")


def test_prompt_pair_is_padded_to_the_same_length(pipe) -> None:
    positive, negative = encode_prompt_pair(" ".join(["cat"] * 100), "ugly", pipe)
    assert positive.shape == negative.shape == (1, 154, pipe.text_encoder.config.hidden_size)
    # The negative's second chunk is the empty prompt's encoding.
    empty = encode_chunks(tokenize_into_chunks("", pipe.tokenizer), pipe.text_encoder)
    assert torch.equal(negative[:, 77:], empty)


def test_scheduled_conditioning_keeps_its_lengths_and_pads_for_diffusers(pipe) -> None:
    raw = encode_prompt_schedules("[cat:" + "dog " * 80 + ":2]", "[ugly|bad]", pipe, steps=4)
    assert [z.shape[1] for _, z in raw.positive] == [77, 154] and {z.shape[1] for _, z in raw.negative} == {77}
    conditioning = raw.padded()
    assert [step for step, _ in conditioning.positive] == [2, 4] and len(conditioning.negative) == 4
    assert {z.shape[1] for _, z in conditioning.positive + conditioning.negative} == {154}
    assert conditioning.changes_during_sampling
    first, second = conditioning.at_step(1), conditioning.at_step(3)
    assert not torch.equal(first[0], second[0]) and not torch.equal(first[1], conditioning.at_step(2)[1])
    assert conditioning.at_step(99)[0] is conditioning.positive[-1][1]


def test_emphasis_and_clip_skip_change_the_embeddings(pipe) -> None:
    plain, _ = encode_prompt_pair("a cat", "", pipe)
    assert torch.equal(encode_prompt_pair("a (cat:1.0)", "", pipe)[0], plain)
    emphasised, _ = encode_prompt_pair("a (cat:1.5)", "", pipe)
    assert not torch.allclose(emphasised, plain)
    skipped, _ = encode_prompt_pair("a cat", "", pipe, clip_skip=2)
    assert not torch.allclose(skipped, plain)
    for prompt in ("a BREAK b", "(cat:1.3)", "[cat]"):  # the tiny model's embeddings have a mean of ~0
        assert not torch.isnan(encode_prompt_pair(prompt, prompt, pipe)[0]).any()


def test_emphasis_restores_the_chunk_mean(pipe) -> None:
    # A trained final layer norm has a bias, so the embeddings' mean is not 0 (the tiny model's is).
    text_encoder = copy.deepcopy(pipe.text_encoder)
    with torch.no_grad():
        text_encoder.final_layer_norm.bias.fill_(0.1)
    chunks = tokenize_into_chunks("a (cat:1.5) [dog]", pipe.tokenizer)
    plain = encode_chunks(tokenize_into_chunks("a cat dog", pipe.tokenizer), text_encoder)
    emphasised = encode_chunks(chunks, text_encoder)
    assert emphasised.mean().item() == pytest.approx(plain.mean().item(), rel=1e-4)
    ratio = plain.mean() / (plain * torch.tensor(chunks[0].multipliers)[None, :, None]).mean()
    assert torch.allclose(emphasised[0, 2], plain[0, 2] * 1.5 * ratio, atol=1e-5)


def test_multi_vector_embedding_is_not_split_across_chunks(pipe, tiny_models_dir) -> None:
    from aws_extension.engine.addons import applied_addons

    with applied_addons(pipe, embeddings=[tiny_models_dir / "embeddings" / "tiny-emb.safetensors"]):
        first_id = pipe.tokenizer.convert_tokens_to_ids("tiny-emb")
        (alone,) = tokenize_into_chunks("tiny-emb", pipe.tokenizer, pipe)
        assert alone.tokens[1:3] == [first_id, first_id + 1]
        # 74 tokens, then the 2-vector embedding: it moves whole to the second chunk.
        chunks = tokenize_into_chunks(" ".join(["cat"] * 74) + " tiny-emb", pipe.tokenizer, pipe)
        assert len(chunks) == 2 and chunks[0].tokens[75] == EOS
        assert chunks[1].tokens[1:3] == [first_id, first_id + 1]


def test_break_makes_a_longer_cond_than_uncond_and_the_denoiser_runs_them_apart(pipe) -> None:
    """A1111 (pad_cond_uncond off, its default) runs a cond and an uncond of different lengths through the
    UNet separately; padding the uncond with an empty chunk (as diffusers needs) changes its prediction,
    which made prompts with BREAK ~3/255 off A1111."""
    from aws_extension.engine.k_pass import CFGDenoiser, model_sigmas

    conditioning = encode_prompt_schedules("a cat BREAK a dog", "blurry", pipe, steps=4)
    positive, negative = conditioning.at_step(1)
    assert (positive.shape[1], negative.shape[1]) == (154, 77)
    sigmas = model_sigmas(pipe)
    denoiser = CFGDenoiser(pipe.unet, sigmas, conditioning, cfg_scale=7.0, steps=4)
    x, sigma = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1)), torch.tensor(3.0)
    t = sigmas.sigma_to_t(sigma.reshape(1))
    with torch.no_grad():
        eps_cond, eps_uncond = (pipe.unet(x / (sigma ** 2 + 1) ** 0.5, t, encoder_hidden_states=z).sample
                                for z in (positive, negative))
        expected = x - sigma * (eps_uncond + (eps_cond - eps_uncond) * 7.0)
        assert (denoiser(x, sigma) - expected).abs().max() < 1e-4  # float32 rounding of the other order
        padded = CFGDenoiser(pipe.unet, sigmas, conditioning.padded(), cfg_scale=7.0, steps=4)
        assert (padded(x, sigma) - expected).abs().max() > 1e-2


def test_emphasis_settings_as_a1111(pipe) -> None:
    """A1111 1.10's sd_emphasis: "Original" restores each chunk's mean, "No norm" does not, "Ignore" parses
    the weights but drops them, "None" does not parse (brackets and BREAK are text); comma_padding_backtrack
    0 never moves text after a comma to the next chunk."""
    def encode(text: str, **settings) -> torch.Tensor:
        emphasis = Emphasis(**settings)
        return encode_chunks(tokenize_into_chunks(text, pipe.tokenizer, emphasis=emphasis), pipe.text_encoder,
                             emphasis=emphasis)

    plain = encode("a cat")
    assert torch.equal(encode("a (cat:1.5)", mode="Ignore"), plain)
    no_norm = encode("a (cat:1.5)", mode="No norm")
    chunk = tokenize_into_chunks("a (cat:1.5)", pipe.tokenizer)[0]
    assert torch.allclose(no_norm, plain * torch.tensor(chunk.multipliers)[None, :, None])
    assert tokenize_into_chunks("a (cat:1.5)", pipe.tokenizer, emphasis=Emphasis("None"))[0].tokens != chunk.tokens
    assert len(tokenize_into_chunks("a BREAK b", pipe.tokenizer, emphasis=Emphasis("None"))) == 1
    long_text = "cat, " * 35 + "a big red cat " * 3  # the last comma is token 70, the chunk is full at 75
    cut = tokenize_into_chunks(long_text, pipe.tokenizer)[0].tokens
    kept = tokenize_into_chunks(long_text, pipe.tokenizer, emphasis=Emphasis(comma_padding_backtrack=0))[0].tokens
    assert cut.count(EOS) > 1 and kept.count(EOS) == 1


@pytest.mark.parametrize(("sampler", "calls"), [
    ("Euler", 4),  # one model call a step
    ("Heun", 7),  # two a step, one on the last (to sigma 0)
    ("DPM++ 2S a", 7),
    ("PLMS", 4),  # a timestep sampler: 4 timesteps, 3 steps, its first step two calls
])
def test_prompt_editing_counts_model_calls_as_a1111(pipe, sampler: str, calls: int) -> None:
    """A1111's CFGDenoiser picks the prompt with `self.step`, its count of model calls in the pass (0 first),
    from a schedule built for steps × 2 on second-order samplers (`p.step_multiplier`)."""
    from dataclasses import dataclass, field

    from aws_extension.engine.k_pass import (
        CFGDenoiser,
        KPass,
        ScheduleSettings,
        model_sigmas,
        pass_sigmas,
        sample,
    )
    from aws_extension.engine.k_samplers import Options
    from aws_extension.engine.noise import ImageNoise
    from aws_extension.engine.prompt import ScheduledConditioning
    from aws_extension.engine.samplers import SAMPLERS

    @dataclass
    class Recorded(ScheduledConditioning):
        asked: list[int] = field(default_factory=list)

        def at_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
            self.asked.append(step)
            return super().at_step(step)

    spec, steps = SAMPLERS[sampler], 4
    assert spec.step_multiplier == (2 if sampler in ("Heun", "DPM++ 2S a") else 1)
    schedule_steps = steps * spec.step_multiplier
    scheduled = encode_prompt_schedules("[a cat:a dog:0.5]", "blurry", pipe, steps=schedule_steps)
    conditioning = Recorded(scheduled.positive, scheduled.negative)
    assert [last for last, _ in conditioning.positive] == [schedule_steps // 2, schedule_steps]
    sigmas_table = model_sigmas(pipe)
    sigmas = pass_sigmas(spec.sigmas, spec.discard_penultimate, steps, sigmas_table, ScheduleSettings())
    denoiser = CFGDenoiser(pipe.unet, sigmas_table, conditioning, cfg_scale=7.0, steps=steps)
    noise = ImageNoise((4, 8, 8), [1])
    run = KPass(spec.k_function, Options(eta=0.0), False, noise, [1], lambda i: None)
    with torch.no_grad():
        sample(denoiser, run, noise.first() * sigmas[0], sigmas)
    assert conditioning.asked == list(range(calls))
    cat, dog = (z for _, z in conditioning.positive)
    # calls 0 .. steps × multiplier / 2 get the first prompt (A1111: step <= its end), the rest the second
    assert [conditioning.at_step(call)[0] is dog for call in range(calls)] == [call > schedule_steps // 2
                                                                                for call in range(calls)]
    assert cat is not dog


def test_alternation_follows_a1111s_call_count() -> None:
    """[a|b] in A1111: the schedule [(1, a), (2, b), ...] read at calls 0, 1, 2, 3 gives a, a, b, a."""
    schedule = prompt_schedule("[a|b]", 4)
    conditioning = ScheduledConditioning([(step, torch.tensor([[float(text == "b")]])) for step, text in schedule],
                                         [(4, torch.zeros((1, 1)))])
    assert [float(conditioning.at_step(call)[0]) for call in range(4)] == [0.0, 0.0, 1.0, 0.0]

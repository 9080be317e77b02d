"""The decode loop: the same logits and tokens as ``generate`` (greedy and sampled), stop tokens, stop requests, text deltas."""

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from yuren_core.decoding import Decoder, Sampler, TextDeltas
from yuren_core.loading import load_model


@pytest.fixture(scope="module")
def served(fused_model_dir):
    return load_model(fused_model_dir)


def image_prompt(config, text=(5, 6, 7)):
    patches = [config.img_patch_token_id] * config.image_seq_len
    return [*text, config.img_start_token_id, *patches, config.img_end_token_id, *text, 9, 10]


PIXELS = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def generate(model, input_ids, pixel_values, seed=None, **kwargs):
    """``model.generate`` on one unpadded prompt that never stops early; its raw output."""
    if seed is not None:
        torch.manual_seed(seed)
    ids = torch.tensor([input_ids])
    with torch.inference_mode():
        return model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=pixel_values,
            eos_token_id=[],
            pad_token_id=0,
            **kwargs,
        )


def generated(model, input_ids, pixel_values, seed=None, **kwargs):
    return generate(model, input_ids, pixel_values, seed, **kwargs)[0, len(input_ids) :].tolist()


def decoded(model, input_ids, pixel_values, seed=None, **kwargs):
    if seed is not None:
        torch.manual_seed(seed)
    return list(Decoder(model).tokens(input_ids, pixel_values=pixel_values, **kwargs))


def test_greedy_tokens_match_generate_with_an_image(served):
    model, _, _ = served
    prompt = image_prompt(model.config)
    expected = generated(model, prompt, PIXELS, max_new_tokens=24, do_sample=False, repetition_penalty=1.3)
    assert decoded(model, prompt, PIXELS, max_new_tokens=24, repetition_penalty=1.3) == expected
    # The image matters: the same prompt with another image decodes differently.
    other = decoded(model, prompt, PIXELS.flip(-1) * 3, max_new_tokens=24, repetition_penalty=1.3)
    assert other != expected


def test_sampled_tokens_match_generate_for_the_same_seed(served):
    model, _, _ = served
    prompt = image_prompt(model.config)
    settings = {"temperature": 1.3, "top_p": 0.8, "repetition_penalty": 1.2}
    expected = generated(model, prompt, PIXELS, seed=3, max_new_tokens=24, do_sample=True, top_k=0, **settings)
    assert decoded(model, prompt, PIXELS, seed=3, max_new_tokens=24, **settings) == expected
    assert decoded(model, prompt, PIXELS, seed=4, max_new_tokens=24, **settings) != expected


def test_the_repetition_penalty_covers_the_answer_so_far():
    """Greedy decoding of a small random model falls into a loop; a strong penalty on every token seen, the
    answer's own included, breaks it as it does in ``generate``."""
    model = grouped_query_llama()
    assert len(set(decoded(model, [5], None, max_new_tokens=9))) < 9
    penalised = decoded(model, [5], None, max_new_tokens=9, repetition_penalty=5.0)
    assert len(set(penalised)) == 9
    assert penalised == generated(model, [5], None, max_new_tokens=9, do_sample=False, repetition_penalty=5.0)


def test_stops_before_an_end_token_and_on_request(served):
    model, _, _ = served
    prompt = image_prompt(model.config)
    free = decoded(model, prompt, PIXELS, max_new_tokens=12)
    assert len(free) == 12
    assert decoded(model, prompt, PIXELS, max_new_tokens=12, stop_ids=[free[5]]) == free[: free.index(free[5])]
    steps = []
    requested = decoded(model, prompt, PIXELS, max_new_tokens=12, should_stop=lambda: steps.append(1) or len(steps) > 3)
    assert requested == free[:3]


def test_text_deltas_concatenate_to_the_whole_decode(tokenizer):
    text = "Hello world, 你好吗？ A cat 🐈 sat. 羽人 answers\nline two"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    deltas = TextDeltas(tokenizer)
    pieces = [deltas.add(token) for token in ids]
    pieces.append(deltas.flush())
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    assert sum(1 for piece in pieces if piece) > len(ids) // 2  # streamed, not held to the end
    assert all("\ufffd" not in piece for piece in pieces)


def logits_of_each_step(decoder, input_ids, pixel_values, max_new_tokens):
    """The decoder's greedy tokens and the raw logits of every decode step (the prompt's excluded)."""
    steps = []
    forward = decoder._next

    def recorded(*args):
        steps.append(forward(*args))
        return steps[-1]

    decoder._next = recorded
    tokens = list(decoder.tokens(input_ids, pixel_values=pixel_values, max_new_tokens=max_new_tokens))
    return tokens, steps


def generated_logits(model, input_ids, pixel_values, max_new_tokens):
    out = generate(
        model,
        input_ids,
        pixel_values,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    return out.sequences[0, len(input_ids) :].tolist(), [step.float() for step in out.logits[1:]]


def assert_steps_equal_generate(model, input_ids, pixel_values, max_new_tokens=16):
    decoder = Decoder(model)
    tokens, logits = logits_of_each_step(decoder, input_ids, pixel_values, max_new_tokens)
    expected_tokens, expected_logits = generated_logits(model, input_ids, pixel_values, max_new_tokens)
    assert tokens == expected_tokens
    assert len(logits) == len(expected_logits) == max_new_tokens - 1
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(logits, expected_logits, strict=True))


def test_decode_steps_give_generates_logits_exactly_with_an_image(served):
    model, _, _ = served
    assert_steps_equal_generate(model, image_prompt(model.config), PIXELS)


def test_decode_steps_give_generates_logits_exactly_after_a_long_prompt(served):
    model, _, _ = served
    prompt = torch.randint(5, 1000, (1500,), generator=torch.Generator().manual_seed(1)).tolist()
    assert_steps_equal_generate(model, prompt, None, max_new_tokens=24)


def test_decode_steps_give_generates_logits_exactly_with_eager_attention(fused_model_dir):
    model, _, _ = load_model(fused_model_dir)
    model.set_attn_implementation("eager")
    assert_steps_equal_generate(model, image_prompt(model.config), PIXELS)


def test_decode_steps_give_generates_logits_exactly_in_8bit(fused_model_dir):
    model, _, _ = load_model(fused_model_dir, load_8bit=True)
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.int8
    assert_steps_equal_generate(model, image_prompt(model.config), PIXELS)


def grouped_query_llama(**rope_parameters) -> LlamaForCausalLM:
    """A random 2-layer LLaMA with 4 query heads sharing 2 key/value heads, positions up to 16, random norm weights."""
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, **rope_parameters},
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    # Norm weights start as ones; distinct ones make a norm applied in the wrong place show.
    for name, weight in model.named_parameters():
        if name.endswith("norm.weight"):
            torch.nn.init.uniform_(weight, 0.5, 1.5)
    return model


def assert_decoder_equals_generate(decoder, model, prompt=(3, 9, 4, 12, 7, 30, 2, 5), max_new_tokens=8):
    tokens, logits = logits_of_each_step(decoder, list(prompt), None, max_new_tokens)
    expected_tokens, expected_logits = generated_logits(model, list(prompt), None, max_new_tokens)
    assert tokens == expected_tokens
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(logits, expected_logits, strict=True))


def test_decode_steps_give_generates_logits_exactly_with_grouped_query_attention():
    model = grouped_query_llama()
    assert_decoder_equals_generate(Decoder(model), model)


def test_decode_steps_give_generates_logits_exactly_with_dynamic_rotary_scaling():
    """A rotary table that changes with the sequence length (dynamic scaling past 16 positions)."""
    model = grouped_query_llama(rope_type="dynamic", factor=4.0)
    assert_decoder_equals_generate(Decoder(model), model, max_new_tokens=24)


@pytest.mark.parametrize("hooked", ["layers.1.self_attn", "layers.0.mlp.up_proj"])
def test_hooks_on_the_models_modules_run_in_every_step(hooked):
    """Decode steps call the model's own modules, so their hooks (an offload hook, say) run as in ``generate``."""
    model = grouped_query_llama()
    calls = []
    model.model.get_submodule(hooked).register_forward_pre_hook(lambda module, args: calls.append(module))
    assert_decoder_equals_generate(Decoder(model), model)
    # Two forwards per generated token (generate's and the decoder's), the prompt's included.
    assert len(calls) == 2 * 8


def generates_choice(history: torch.Tensor, logits: torch.Tensor, temperature, top_p, penalty) -> int:
    """The next token as ``generate`` picks it: its logits processors, then argmax or ``torch.multinomial``."""
    processors = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(penalty)])
    if temperature:
        processors += [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)]
    scores = processors(history, logits)
    return int(scores.argmax()) if not temperature else int(torch.multinomial(torch.softmax(scores, -1), 1))


@pytest.mark.parametrize(
    ("temperature", "top_p", "penalty"),
    [(0.7, 0.9, 1.1), (1.0, 0.5, 1.3), (0.3, 0.99, 1.0), (1.5, 0.8, 0.9), (0, 1, 1.2)],
)
def test_sampler_picks_generates_tokens_and_draws_the_same_random_numbers(temperature, top_p, penalty):
    """Token by token over a growing history (prompt ids beyond the logits' width included), with ties among the
    scores on every third step: the same choice as transformers' processors and ``torch.multinomial``, and the random
    generator left in the same state."""
    vocab = 300
    generator = torch.Generator().manual_seed(7)
    prompt = torch.randint(0, vocab + 20, (40,), generator=generator)
    sampler = Sampler(prompt, vocab, temperature=temperature, top_p=top_p, repetition_penalty=penalty)
    history = prompt[None]
    for step in range(60):
        logits = torch.randn(1, vocab, generator=generator) * (1 + step % 4)
        if step % 3 == 0:
            logits[0, :40] = logits[0, 0]
        torch.manual_seed(step)
        expected = generates_choice(history, logits.clone(), temperature, top_p, penalty)
        after_expected = torch.rand(1)
        torch.manual_seed(step)
        assert sampler(logits) == expected
        assert torch.equal(torch.rand(1), after_expected)
        sampler.add(expected)
        history = torch.cat([history, torch.tensor([[expected]])], dim=1)


@pytest.mark.parametrize("settings", [(-0.1, 0.9, 1.0), (0.7, 0.0, 1.0), (0.7, 1.1, 1.0), (0.7, 0.9, 0.0)])
def test_sampler_refuses_settings_generate_refuses(settings):
    temperature, top_p, penalty = settings
    with pytest.raises(ValueError, match="sampling needs"):
        Sampler([1, 2], 10, temperature=temperature, top_p=top_p, repetition_penalty=penalty)

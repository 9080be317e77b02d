"""The lean decode loop: the same tokens as ``generate`` (greedy and sampled), stop tokens, stop requests, text deltas."""

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

from yuren_core.decoding import Decoder, PreallocatedLayer, Sampler, TextDeltas
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


def test_preallocated_layer_returns_what_concatenation_would():
    layer = PreallocatedLayer(capacity=5)
    first, second = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 1, 4)
    layer.update(first, -first)
    keys, values = layer.update(second, -second)
    assert torch.equal(keys, torch.cat([first, second], dim=2)) and torch.equal(values, -keys)
    assert layer.get_seq_length() == 4
    with pytest.raises(ValueError, match="holds 5 tokens"):
        layer.update(torch.randn(1, 2, 2, 4), torch.randn(1, 2, 2, 4))


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


def assert_lean_steps_equal_generate(model, input_ids, pixel_values, max_new_tokens=16):
    decoder = Decoder(model)
    assert decoder.lean
    tokens, logits = logits_of_each_step(decoder, input_ids, pixel_values, max_new_tokens)
    expected_tokens, expected_logits = generated_logits(model, input_ids, pixel_values, max_new_tokens)
    assert tokens == expected_tokens
    assert len(logits) == len(expected_logits) == max_new_tokens - 1
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(logits, expected_logits, strict=True))


def test_lean_steps_give_generates_logits_exactly_with_an_image(served):
    model, _, _ = served
    assert_lean_steps_equal_generate(model, image_prompt(model.config), PIXELS)
    # The static cache of the compiled path holds unfilled slots, which only a mask keeps out.
    assert not Decoder(model, compile=True).lean


def test_lean_steps_give_generates_logits_exactly_after_a_long_prompt(served):
    model, _, _ = served
    prompt = torch.randint(5, 1000, (1500,), generator=torch.Generator().manual_seed(1)).tolist()
    assert_lean_steps_equal_generate(model, prompt, None, max_new_tokens=24)


def test_lean_steps_give_generates_logits_exactly_with_eager_attention(fused_model_dir):
    model, _, _ = load_model(fused_model_dir)
    model.set_attn_implementation("eager")
    assert_lean_steps_equal_generate(model, image_prompt(model.config), PIXELS)


def test_lean_steps_give_generates_logits_exactly_in_8bit(fused_model_dir):
    model, _, _ = load_model(fused_model_dir, load_8bit=True)
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.int8
    assert_lean_steps_equal_generate(model, image_prompt(model.config), PIXELS)


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


def test_lean_steps_give_generates_logits_exactly_with_grouped_query_attention():
    model = grouped_query_llama()
    decoder = Decoder(model)
    assert decoder.lean
    assert_decoder_equals_generate(decoder, model)


def test_stacks_the_lean_step_cannot_serve_take_the_general_path():
    """A rotary table that changes with the sequence length (dynamic scaling past 16 positions) is declined."""
    model = grouped_query_llama(rope_type="dynamic", factor=4.0)
    decoder = Decoder(model)
    assert not decoder.lean
    assert_decoder_equals_generate(decoder, model, max_new_tokens=24)


@pytest.mark.parametrize(
    ("hooked", "lean"),
    [
        ("layers.1", False),
        ("layers.1.self_attn", False),
        ("layers.1.mlp", True),
        ("layers.0.input_layernorm", True),
        ("layers.1.self_attn.k_proj", True),
        ("layers.0.mlp.up_proj", True),
    ],
)
def test_hooks_run_whichever_path_decodes(hooked, lean):
    """The lean step replaces the layers' and attention's forward, so a hook there (an offload hook, say) sends
    decoding through the general path; norms, MLPs and projections with a hook it calls as modules (unfused), so
    their hooks run on the lean one."""
    model = grouped_query_llama()
    calls = []
    model.model.get_submodule(hooked).register_forward_pre_hook(lambda module, args: calls.append(module))
    decoder = Decoder(model)
    assert decoder.lean is lean
    assert_decoder_equals_generate(decoder, model)
    # Two forwards per generated token (generate's and the decoder's), the prompt's included.
    assert len(calls) == 2 * 8


def stacking_is_exact(model) -> bool:
    """Whether this machine's kernels give the stacked q/k/v and gate/up weights' products bit for bit as the separate
    ones, for ``model``'s shapes and dtype: found here independently of ``LlamaStep``'s probe, which fuses only then."""
    layer = model.model.layers[0]
    groups = [
        [layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight],
        [layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight],
    ]
    linear = torch.nn.functional.linear
    with torch.no_grad():
        x = torch.rand(1, model.config.hidden_size, dtype=groups[0][0].dtype)
        return all(
            torch.equal(linear(x, torch.cat(group)), torch.cat([linear(x, w) for w in group], -1)) for group in groups
        )


def test_fused_projections_change_the_layout_only():
    """A model that owns its weights gets one fused weight per layer for q/k/v and for gate/up, where this machine's
    kernels make the stacked product exact: the modules' weights are views of it with their old values (no second
    copy). Either way the logits stay generate's, bit for bit."""
    model = grouped_query_llama()
    fused = 2 if stacking_is_exact(model) else 0
    before = {name: weight.clone() for name, weight in model.state_dict().items()}
    decoder = Decoder(model)
    step = decoder._llama
    assert step.fused_layers == fused and sum(weight is not None for weight in step.gate_up) == fused
    attention = model.model.layers[1].self_attn
    if fused:
        assert attention.k_proj.weight.data_ptr() == step.qkv[1].data_ptr() + attention.q_proj.weight.nbytes
    assert all(torch.equal(weight, before[name]) for name, weight in model.state_dict().items())
    assert_decoder_equals_generate(decoder, model, max_new_tokens=12)
    # A second decoder on the same model reads the same fused weights.
    again = Decoder(model)._llama
    assert again.fused_layers == fused and all(
        ours.data_ptr() == theirs.data_ptr()
        for ours, theirs in zip(again.qkv + again.gate_up, step.qkv + step.gate_up, strict=True)
    )


def test_new_weights_given_after_fusing_are_the_ones_decoded():
    """A weight replaced by a new tensor, or the whole model cast, after the decoder fused the projections: the next
    answer fuses again, so it decodes what the modules now hold, as ``generate`` does."""
    model = grouped_query_llama()
    fused = stacking_is_exact(model)
    decoder = Decoder(model)
    attention = model.model.layers[1].self_attn
    attention.k_proj.weight = torch.nn.Parameter(attention.k_proj.weight * -2)
    assert decoder._llama.still_fused() is not fused
    assert_decoder_equals_generate(decoder, model)
    # Layer 0 keeps the weight it was fused into; layer 1's query and value views of its old one own no memory.
    assert decoder._llama.still_fused() and decoder._llama.fused_layers == (1 if fused else 0)
    model.to(torch.float64)
    assert_decoder_equals_generate(decoder, model)
    assert decoder._llama.fused_layers == (2 if stacking_is_exact(model) else 0)


def test_weights_mapped_from_a_file_are_not_fused(served):
    """Fusing a weight that lives in the checkpoint's file mapping would add a copy and free nothing."""
    model, _, _ = served
    assert Decoder(model).fused_layers == 0


def test_fusion_is_declined_where_the_fused_product_differs(monkeypatch):
    """Where the stacked weight's product is not bit-identical on this device (a kernel that sums in another
    order), the projections stay separate and untouched."""
    model = grouped_query_llama()
    linear = torch.nn.functional.linear

    def drifting(x, weight, bias=None):
        """The last bit off wherever the weight is a stacked one (a plain tensor, not a module's parameter)."""
        out = linear(x, weight, bias)
        return out if isinstance(weight, torch.nn.Parameter) else out.nextafter(out + 1)

    monkeypatch.setattr(torch.nn.functional, "linear", drifting)
    query = model.model.layers[0].self_attn.q_proj.weight
    step = Decoder(model)._llama
    assert step.fused_layers == 0 and all(weight is None for weight in step.gate_up)
    assert model.model.layers[0].self_attn.q_proj.weight is query and query.untyped_storage().nbytes() == query.nbytes


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

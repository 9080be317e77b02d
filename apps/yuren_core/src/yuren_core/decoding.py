"""Decoding one answer token by token: a plain loop over the model and a transformers KV cache.

``model.generate`` re-derives per step what a single chat answer never changes
(attention masks, input preparation, stopping bookkeeping), and streaming from
it needs a worker thread and a queue. :class:`Decoder` runs the prompt once
through the model's forward (images included), then one forward of its
decoder stack and output head per new token, on a ``DynamicCache`` as
``generate`` uses, choosing each token as ``generate`` would
(:class:`Sampler`: the same tokens for the same seed, so the settings mean
what they mean there). The logits are ``generate``'s, bit for bit. Tokens come
back as a plain iterator in the caller's thread; :class:`TextDeltas` turns
them into text.

``compile=True`` decodes on a :class:`~transformers.StaticCache` with the
same step under ``torch.compile`` (fixed shapes: one graph for every step);
it pays where per-step Python overhead, not memory bandwidth, limits batch-1
decoding, i.e. on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import Cache


class Sampler:
    """``generate``'s choice of each next token of one answer: the same tokens for the same seed, in fewer calls.

    Repetition penalty over the prompt and the answer so far, then temperature
    and top-p, then one ``torch.multinomial`` draw (``temperature == 0``:
    greedy), each as transformers' ``RepetitionPenaltyLogitsProcessor``,
    ``TemperatureLogitsWarper`` and ``TopPLogitsWarper`` compute it. Two steps
    take another route to the same values: the penalty reads a mask of the
    tokens seen, kept up to date token by token, instead of gathering and
    scattering the whole history every step; top-p removes the least likely
    tokens up to a count found by one binary search of the sorted cumulative
    probabilities (they never decrease), instead of scattering a mask back.
    ``vocab_size`` is the logits' width; ids beyond it are never penalised.
    """

    def __init__(
        self,
        prompt: torch.Tensor | Sequence[int],
        vocab_size: int,
        *,
        temperature: float,
        top_p: float,
        repetition_penalty: float,
        device: torch.device | str = "cpu",
    ):
        if temperature < 0 or not 0 < top_p <= 1 or repetition_penalty <= 0:
            raise ValueError(
                f"sampling needs temperature >= 0, 0 < top_p <= 1 and repetition_penalty > 0; got {temperature}, "
                f"{top_p} and {repetition_penalty}"
            )
        self.vocab_size = vocab_size
        self.greedy = temperature == 0
        self.penalty = repetition_penalty
        self.temperature = temperature
        self.top_p = top_p
        self.seen = torch.zeros(1, vocab_size, dtype=torch.bool, device=device)
        ids = torch.as_tensor(prompt, dtype=torch.long, device=device)
        self.seen[0, ids[ids < vocab_size]] = True
        # Compared in the scores' dtype, as ``cumulative_probs <= (1 - top_p)`` is.
        self._removable = torch.tensor([[1 - top_p]], dtype=torch.float32, device=device)

    def add(self, token: int) -> None:
        """Count ``token`` as seen (the repetition penalty applies to it from the next step on)."""
        if token < self.vocab_size:
            self.seen[0, token] = True

    def __call__(self, logits: torch.Tensor) -> int:
        """The next token for ``logits`` ``[1, vocab_size]`` (float32)."""
        scores = logits
        if self.penalty != 1.0:
            penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
            scores = torch.where(self.seen, penalised, scores)
        if self.greedy:
            return int(scores.argmax(dim=-1))
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_p < 1.0:
            ascending, order = torch.sort(scores, descending=False)
            cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
            # The tokens whose cumulative probability is at most 1 - top_p, keeping at least the likeliest one.
            removed = min(int(torch.searchsorted(cumulative, self._removable, right=True)), self.vocab_size - 1)
            if removed:
                scores = scores.index_fill(-1, order[0, :removed], float("-inf"))
        return int(torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1))


class Decoder:
    """Generate tokens for one sequence at a time from a causal LM (a YuRen model or any LLaMA-like one).

    The model must have a decoder stack and an output head
    (``model.get_decoder()``, taking ``input_ids``, ``position_ids``, ``cache``;
    ``model.get_output_embeddings()``), as transformers' ``*ForCausalLM``
    classes do. ``compile`` switches to a static cache and a compiled decode
    step. Static caches come in sizes of whole multiples of
    ``STATIC_CACHE_STEP`` tokens (at most ``max_cache_len``): attention reads
    the whole cache every step, so a short chat should not pay for the full
    context, and each size compiles once.
    """

    STATIC_CACHE_STEP = 512

    def __init__(self, model, *, compile: bool = False, max_cache_len: int | None = None):
        self.model = model
        self.compiled = compile
        self.max_cache_len = max_cache_len or model.config.max_position_embeddings
        self._static_caches: dict[int, StaticCache] = {}
        self.device = model.device
        # On a GPU, CUDA graphs replay the whole step without launching its kernels one by one from Python.
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        self._step = torch.compile(self._decode_step, dynamic=False, mode=mode) if compile else self._decode_step

    @torch.inference_mode()
    def _new_cache(self, capacity: int) -> Cache:
        if not self.compiled:
            return DynamicCache(config=self.model.config)
        # Reused across answers, so the compiled step keeps its shapes (and its graph) for each size.
        step = self.STATIC_CACHE_STEP
        size = min(self.max_cache_len, -(-capacity // step) * step)
        cache = self._static_caches.get(size)
        if cache is None:
            cache = self._static_caches[size] = StaticCache(config=self.model.config, max_cache_len=size)
        else:
            cache.reset()
        return cache

    def _decode_step(self, token: torch.Tensor, position: torch.Tensor, cache: Cache) -> torch.Tensor:
        """Logits ``[1, vocab]`` for one new ``token`` ``[1, 1]`` at ``position`` ``[1, 1]``, extending ``cache``.

        The model's forward without its image handling, which applies only
        while the cache is empty (never in a decode step) and whose check
        reads the cache's length back from the device.
        """
        hidden = self.model.get_decoder()(input_ids=token, position_ids=position, cache=cache, use_cache=True)
        return self.model.get_output_embeddings()(hidden.last_hidden_state[:, -1, :])

    @torch.inference_mode()
    def _prefill(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, cache: Cache) -> torch.Tensor:
        kwargs = {"pixel_values": pixel_values} if pixel_values is not None else {}
        # Only the last position's logits are needed: a prompt of n tokens would otherwise cost n x vocab.
        out = self.model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1, **kwargs)
        return out.logits[:, -1, :]

    @torch.inference_mode()
    def _next(self, token: int, position: int, cache: Cache) -> torch.Tensor:
        device = self.device
        return self._step(
            torch.tensor([[token]], device=device), torch.tensor([[position]], device=device), cache
        ).float()

    def tokens(
        self,
        input_ids: Sequence[int],
        *,
        pixel_values: torch.Tensor | None = None,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        stop_ids: Sequence[int] = (),
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[int]:
        """Yield up to ``max_new_tokens`` new token ids continuing ``input_ids``.

        Ends before yielding a token in ``stop_ids`` (end of turn), or as soon
        as ``should_stop()`` is true (checked before every forward). Sampling
        follows ``generate``: repetition penalty over prompt and answer, then
        temperature and top-p; ``temperature == 0`` is greedy. The caller's
        thread does the work; closing the iterator ends it.
        """
        if self.compiled and len(input_ids) + max_new_tokens > self.max_cache_len:
            raise ValueError(
                f"{len(input_ids)} prompt + {max_new_tokens} new tokens exceed the static cache of "
                f"{self.max_cache_len} tokens"
            )
        prompt = torch.tensor([list(input_ids)], device=self.device)
        sample = Sampler(
            prompt[0],
            self.model.get_output_embeddings().out_features,
            temperature=temperature,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            device=self.device,
        )
        stop = set(stop_ids)
        length = len(input_ids)
        cache = self._new_cache(length + max_new_tokens)
        if should_stop():
            return
        logits = self._prefill(prompt, pixel_values, cache).float()
        for step in range(max_new_tokens):
            token = sample(logits)
            if token in stop:
                return
            sample.add(token)
            length += 1
            yield token
            if step == max_new_tokens - 1 or should_stop():
                return
            logits = self._next(token, length - 1, cache)


class TextDeltas:
    """Turn a growing list of token ids into the new text each token adds, as soon as it is complete.

    Decodes a short window (from the token before the last emitted text), so a
    step costs the same at token 10 and token 1000; the pieces concatenate to
    ``tokenizer.decode(all_ids, skip_special_tokens=True)``. Text ending in an
    incomplete UTF-8 character (a byte-fallback token) waits for the next token.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # start of the decoding window: the context that fixes leading spaces
        self._read = 0  # tokens whose text has been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token: int) -> str:
        """Append ``token``; return the text it completes ("" while a character is still incomplete)."""
        self.ids.append(token)
        seen = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        if len(text) <= len(seen) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return text[len(seen) :]

    def flush(self) -> str:
        """The text still held back at the end of the answer (an incomplete character, as decoded)."""
        if self._read == len(self.ids):
            return ""
        seen = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return text[len(seen) :]

"""A YuRen checkpoint as an lm-evaluation-harness model: HF model interface, prompts in ChatML.

:class:`YuRenLM` is lm-eval's ``HFLM`` (its batching, log-likelihood scoring,
generation and stop handling) with two changes: the model comes from
:func:`yuren_core.loading.load_model`, so YuRen checkpoints and imported
upstream ones load alike, and every prompt is a user turn rendered by
:func:`yuren_core.chatml.render`, so the model is asked exactly the way it
was trained. lm-eval's own chat-template path is not used: it formats text
and re-tokenizes it, where the renderer inserts special tokens as ids.

A plain LLaMA text checkpoint (``model_type: "llama"``: a prepared base or a
stage-1 model) loads through :func:`load_text_model` too. Its tokenizer
decides the prompt format: with YuRen's ChatML tokens (``prepare-base-model``
adds them) questions are ChatML user turns as above; without them (a base
before ``prepare-base-model``, ``make-tiny-model``'s) they are plain text,
as lm-eval asks any base model.
"""

from __future__ import annotations

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from yuren_core.chatml import ChatEncoder, render
from yuren_core.loading import default_dtype, load_causal_lm, load_model, quantization_config
from yuren_core.upstream import is_upstream_checkpoint, read_config_dict
from yuren_core.vocab import load_tokenizer, special_ids

# The checkpoints evaluate reads: YuRen's (and upstream's release, which load_model converts) and LLaMA text ones.
MULTIMODAL, TEXT_ONLY = "yuren", "llama"


def checkpoint_kind(path: str) -> str:
    """:data:`MULTIMODAL` or :data:`TEXT_ONLY` for the checkpoint at ``path``; any other model type is refused."""
    if is_upstream_checkpoint(path):
        return MULTIMODAL
    model_type = read_config_dict(path).get("model_type")
    if model_type not in (MULTIMODAL, TEXT_ONLY):
        raise ValueError(
            f"{path}/config.json has model_type {model_type!r}: evaluate reads YuRen checkpoints (model_type "
            "'yuren', or upstream's 'multimodal_llama') and LLaMA text checkpoints (model_type 'llama')"
        )
    return model_type


def load_text_model(path: str, *, load_8bit: bool = False, load_4bit: bool = False, device_map=None):
    """``(model, tokenizer)`` of any checkpoint :func:`checkpoint_kind` accepts, in eval mode.

    A YuRen checkpoint loads through :func:`yuren_core.loading.load_model`; a
    LLaMA one through :func:`~yuren_core.loading.load_causal_lm` with the same
    dtype and quantization choices.
    """
    if checkpoint_kind(path) == MULTIMODAL:
        model, tokenizer, _ = load_model(path, load_8bit=load_8bit, load_4bit=load_4bit, device_map=device_map)
        return model, tokenizer
    tokenizer = load_tokenizer(path)
    dtype = torch.float16 if load_8bit else default_dtype()
    quantization = quantization_config(load_8bit=load_8bit, load_4bit=load_4bit, dtype=dtype)
    model = load_causal_lm(path, tokenizer, dtype=dtype, device_map=device_map, quantization_config=quantization)
    model.eval()
    return model, tokenizer


def speaks_chatml(tokenizer) -> bool:
    """Whether ``tokenizer`` has YuRen's special tokens, so prompts can be ChatML turns."""
    try:
        special_ids(tokenizer)
    except ValueError:
        return False
    return True


@register_model("yuren")
class YuRenLM(HFLM):
    """lm-eval model ``yuren``: ``--model yuren --model_args pretrained=DIR[,system_prompt=...]``.

    ``chatml`` says how questions are asked: as ChatML user turns, or (a
    tokenizer without YuRen's tokens) as plain text by lm-eval's ``HFLM``.
    """

    def __init__(
        self,
        pretrained: str,
        *,
        system_prompt: str | None = None,
        batch_size: int | str = 1,
        max_length: int | None = None,
        device: str | None = None,
        load_8bit: bool = False,
        load_4bit: bool = False,
        **kwargs,
    ) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer = load_text_model(pretrained, load_8bit=load_8bit, load_4bit=load_4bit, device_map=device)
        self.chatml = speaks_chatml(tokenizer)
        if system_prompt and not self.chatml:
            raise ValueError(
                f"{pretrained}'s tokenizer has no ChatML tokens, so it has no system turn for --system_prompt"
            )
        super().__init__(
            pretrained=model,
            tokenizer=tokenizer,
            backend="causal",
            batch_size=batch_size,
            max_length=max_length or model.config.max_position_embeddings,
            **kwargs,
        )
        self.system_prompt = system_prompt
        # Built once: every ChatML prompt renders through it (see ChatEncoder).
        self.chat_encoder = ChatEncoder(tokenizer) if self.chatml else None
        # The assistant's turn ends at <|im_end|>; the eos after it only closes training examples.
        self.stop_ids = [self.chat_encoder.ids.im_end, self.chat_encoder.ids.eos] if self.chatml else None

    def chat(self, user_text: str, answer: str | None = None) -> list[dict]:
        """The conversation asking ``user_text`` (and answering ``answer``), with the system prompt if set."""
        turns = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        turns.append({"role": "user", "content": user_text})
        if answer is not None:
            turns.append({"role": "assistant", "content": answer})
        return turns

    def prompt_ids(self, user_text: str) -> list[int]:
        """Token ids of ``user_text`` as a user turn, ending with the assistant's opening."""
        return render(self.chat_encoder, self.chat(user_text), add_generation_prompt=True).input_ids

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if not self.chatml:
            return super()._encode_pair(context, continuation)
        # The continuation is the start of the assistant's answer, rendered as the renderer renders one; the
        # separating whitespace lm-eval puts before it belongs to plain-text prompts, not to a chat turn.
        context_ids = self.prompt_ids(context.rstrip())
        whole = render(self.chat_encoder, self.chat(context.rstrip(), continuation.strip())).input_ids
        # The rendered answer ends with <|im_end|> and eos; the continuation scored is the text before them.
        answer_ids = whole[len(context_ids) : -2]
        if whole[: len(context_ids)] != context_ids or not answer_ids:
            raise ValueError(f"cannot split the rendered answer {continuation!r} from its prompt")
        return context_ids, answer_ids

    def tok_batch_encode(
        self,
        strings: list[str],
        padding_side: str = "left",
        left_truncate_len: int | None = None,
        truncation: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.chatml:
            return super().tok_batch_encode(strings, padding_side, left_truncate_len, truncation)
        prompts = [self.prompt_ids(text) for text in strings]
        if left_truncate_len:
            prompts = [ids[-left_truncate_len:] for ids in prompts]
        width = max(len(ids) for ids in prompts)
        input_ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            span = slice(width - len(ids), width) if padding_side == "left" else slice(0, len(ids))
            input_ids[row, span] = torch.tensor(ids)
            attention_mask[row, span] = 1
        return input_ids, attention_mask

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len=None, **kwargs):
        # lm-eval also calls this on prompts to sort them by length; plain text pieces (stop strings) stay plain.
        if self.chatml:
            add_special_tokens = False
        return super().tok_encode(string, add_special_tokens=add_special_tokens, left_truncate_len=left_truncate_len)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        if self.stop_ids:
            generation_kwargs.setdefault("eos_token_id", self.stop_ids)
        return super()._model_generate(context, max_length, stop, **generation_kwargs)

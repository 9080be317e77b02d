"""YuRen as a vLLM model plugin.

vLLM calls :func:`register` in every process it starts (the
``vllm.general_plugins`` entry point), so ``vllm serve DIR`` and ``vllm.LLM``
load a YuRen checkpoint (``architectures: ["YuRenForCausalLM"]``) with no
flags: the language model runs on vLLM's own LLaMA (tensor and pipeline
parallel work as for any LLaMA), the open_clip tower and the projector run as
the multimodal encoder, and chats are rendered by YuRen's own renderer
(:mod:`yuren_vllm.renderer`). Remote image URLs are refused unless the
operator names the hosts with ``--allowed-media-domains`` (see
:mod:`yuren_vllm.config_defaults`).
"""


def register() -> None:
    """Make ``model_type: yuren`` loadable by transformers and ``YuRenForCausalLM`` by vLLM."""
    from vllm import ModelRegistry

    # Importing the modeling module registers YuRenConfig with AutoConfig, which vLLM reads the config through.
    import yuren_core.modeling  # noqa: F401

    from . import compat
    from .config_defaults import MODE, YuRenDefaults

    # A string keeps vLLM's import of the model lazy, as its own registry does.
    ModelRegistry.register_model("YuRenForCausalLM", "yuren_vllm.model:YuRenForCausalLM")
    # vLLM runs this architecture's hook on every ModelConfig it builds, before a request is served.
    compat.add_config_hook("YuRenForCausalLM", YuRenDefaults)
    compat.add_chat_renderer(MODE, "yuren_vllm.renderer", "YuRenRenderer")

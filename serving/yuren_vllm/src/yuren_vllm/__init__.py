"""YuRen as a vLLM model plugin.

vLLM calls :func:`register` in every process it starts (the
``vllm.general_plugins`` entry point), so ``vllm serve DIR`` and ``vllm.LLM``
load a YuRen checkpoint (``architectures: ["YuRenForCausalLM"]``) with no
flags: the language model runs on vLLM's own LLaMA (tensor and pipeline
parallel work as for any LLaMA), the open_clip tower and the projector run as
the multimodal encoder. Remote image URLs are refused unless the operator
names the hosts with ``--allowed-media-domains`` (see :mod:`yuren_vllm.remote_media`).
"""


def register() -> None:
    """Make ``model_type: yuren`` loadable by transformers and ``YuRenForCausalLM`` by vLLM."""
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    # Importing the modeling module registers YuRenConfig with AutoConfig, which vLLM reads the config through.
    import yuren_core.modeling  # noqa: F401

    from .remote_media import RemoteMediaOff

    # A string keeps vLLM's import of the model lazy, as its own registry does.
    ModelRegistry.register_model("YuRenForCausalLM", "yuren_vllm.model:YuRenForCausalLM")
    # vLLM runs this architecture's hook on every ModelConfig it builds, before a request is served.
    MODELS_CONFIG_MAP["YuRenForCausalLM"] = RemoteMediaOff

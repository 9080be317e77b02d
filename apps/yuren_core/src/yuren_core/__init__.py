"""YuRen's shared core: special tokens, ChatML rendering, the fused image-text model, loading."""

# Registers YuRenConfig / YuRenForCausalLM with transformers' Auto classes, so a saved
# checkpoint loads with AutoModelForCausalLM.from_pretrained once yuren_core is imported.
from . import modeling  # noqa: F401

"""YuRen's shared core: special tokens, ChatML rendering, the fused image-text model, loading.

Importing the package loads nothing heavy: ``yuren_core.modeling`` (imported by
``yuren_core.loading``) registers the model with transformers' Auto classes.
"""

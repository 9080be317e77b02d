"""Defaults vLLM applies to a YuRen checkpoint's config before serving a request.

* **Remote media off.** vLLM fetches any ``http(s)`` image URL a request
  carries unless ``--allowed-media-domains`` is given: a public chat endpoint
  would then make the server request whatever address a client chooses,
  internal ones included. With no ``--allowed-media-domains`` every
  ``http(s)`` URL is refused before anything is fetched. ``data:`` URLs (how
  the web UI sends images) are never fetched and keep working; ``file:`` URLs
  stay off as vLLM has them (``--allowed-local-media-path``).
* **Chats rendered by YuRen's renderer** (:mod:`yuren_vllm.renderer`) unless
  the operator chose a ``--tokenizer-mode``, so typed control tokens stay text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vllm.model_executor.models.config import VerifyAndUpdateConfig

if TYPE_CHECKING:
    from vllm.config import ModelConfig

# The tokenizer mode that selects YuRen's renderer (registered by yuren_vllm.register).
MODE = "yuren"
# vLLM allows a URL when its hostname is in the list, and any URL when the list is empty. A hostname never holds
# spaces, so this one entry matches no URL, and it is what vLLM's refusal quotes back to the client.
NO_REMOTE_MEDIA = "none (remote images are off: the operator enables hosts with --allowed-media-domains)"


class YuRenDefaults(VerifyAndUpdateConfig):
    """vLLM's per-architecture config hook (:func:`yuren_vllm.compat.add_config_hook`)."""

    @staticmethod
    def verify_and_update_model_config(model_config: ModelConfig) -> None:
        """Refuse remote media unless hosts are named; render chats with YuRen's renderer unless told otherwise."""
        if model_config.allowed_media_domains is None:
            model_config.allowed_media_domains = [NO_REMOTE_MEDIA]
        if model_config.tokenizer_mode == "auto":
            model_config.tokenizer_mode = MODE

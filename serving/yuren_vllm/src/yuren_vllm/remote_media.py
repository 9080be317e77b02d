"""Remote media stays off for YuRen unless the operator names the hosts to fetch from.

vLLM fetches any ``http(s)`` image URL a request carries unless
``--allowed-media-domains`` is given: a public chat endpoint would then make
the server request whatever address a client chooses, internal ones included.
For ``YuRenForCausalLM`` the plugin turns that default around: with no
``--allowed-media-domains`` every ``http(s)`` URL is refused before anything is
fetched. ``data:`` URLs (how the web UI sends images) are never fetched and
keep working; ``file:`` URLs stay off as vLLM has them (``--allowed-local-media-path``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vllm.model_executor.models.config import VerifyAndUpdateConfig

if TYPE_CHECKING:
    from vllm.config import ModelConfig

# vLLM allows a URL when its hostname is in the list, and any URL when the list is empty. A hostname never holds
# spaces, so this one entry matches no URL, and it is what vLLM's refusal quotes back to the client.
NO_REMOTE_MEDIA = "none (remote images are off: the operator enables hosts with --allowed-media-domains)"


class RemoteMediaOff(VerifyAndUpdateConfig):
    """vLLM's per-architecture config hook (``MODELS_CONFIG_MAP``): refuse remote media unless hosts are named."""

    @staticmethod
    def verify_and_update_model_config(model_config: ModelConfig) -> None:
        """Set ``allowed_media_domains`` to refuse every host when the operator left it unset."""
        if model_config.allowed_media_domains is None:
            model_config.allowed_media_domains = [NO_REMOTE_MEDIA]

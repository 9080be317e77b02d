"""The Trainer the SFT stages share: the stock one, plus a log of how much of each batch is padding."""

from __future__ import annotations

import torch
from transformers import Trainer

from .collator import padding_tokens


class SFTTrainer(Trainer):
    """``Trainer`` that adds ``padding_share`` (padding tokens / all tokens, all ranks) to each training log.

    ``pad_token_id`` identifies padding in packed batches, which carry no
    attention mask. A run resumed from a checkpoint at ``--max_steps`` (a
    finished run started again, e.g. after a crash in its final save) trains no
    further step.
    """

    def __init__(self, *args, pad_token_id: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.pad_token_id = pad_token_id
        self._padding = 0
        self._tokens = 0

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # The Trainer checks --max_steps only after each step, so a run resumed mid-epoch from its final
        # checkpoint would train one step past it. Stop before fetching that step's batches instead.
        if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return [], None
        return super().get_batch_samples(epoch_iterator, num_batches, device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            padding, total = padding_tokens(inputs, self.pad_token_id)
            self._padding += padding
            self._tokens += total
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training logs ("loss") are written on every rank at the same step, so the counts can be summed here.
        if "loss" in logs and self._tokens:
            counts = torch.tensor([self._padding, self._tokens], dtype=torch.float64, device=self.args.device)
            if self.args.world_size > 1:
                counts = self.accelerator.reduce(counts, reduction="sum")
            logs["padding_share"] = round(float(counts[0] / counts[1]), 4)
            self._padding = self._tokens = 0
        super().log(logs, start_time)

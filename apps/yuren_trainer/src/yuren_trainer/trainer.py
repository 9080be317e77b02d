"""The Trainer the SFT stages share: the stock one, plus a log of how much of each batch is padding.

On flattened packed batches (one row holding the whole batch) it projects onto
the vocabulary only the positions whose next token is supervised: the
``[tokens, vocab]`` logits and loss of prompts, system turns and image patches
would be computed only to be ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Trainer

from yuren_core.constants import IGNORE_INDEX

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
        if not return_outputs and self.label_smoother is None and self.compute_loss_func is None:
            inputs = supervised_positions_only(inputs)
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


def supervised_positions_only(inputs: dict) -> dict:
    """``inputs`` of a flattened packed batch, asking the model for logits and loss at supervised positions only.

    The model gets ``logits_to_keep`` (the positions whose next-token label is
    supervised) and ``shift_labels`` (those labels), so transformers'
    causal-LM loss sums and averages the same terms as over the whole row: the
    same loss and gradients, without the logits nobody reads. Any other batch
    (padded rows, several packed rows, no labels, nothing supervised) is
    returned unchanged.
    """
    labels = inputs.get("labels")
    if labels is None or "position_ids" not in inputs or labels.dim() != 2 or labels.shape[0] != 1:
        return inputs
    # Position i predicts token i + 1; the last position predicts nothing.
    shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    keep = (shift_labels[0] != IGNORE_INDEX).nonzero().squeeze(1)
    if keep.numel() == 0:
        return inputs
    kept = shift_labels[:, keep]
    # ``labels`` only tells the model to compute a loss; with ``shift_labels`` given it is not read.
    return {**inputs, "labels": kept, "shift_labels": kept, "logits_to_keep": keep}

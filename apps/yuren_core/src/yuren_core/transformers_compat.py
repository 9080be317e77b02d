"""Every place yuren_core reaches into transformers beyond its documented API, in one module.

transformers 5 (pinned in ``uv.lock``) remembers on a loaded model the key
renamings it loaded with (``from_pretrained(key_mapping=...)`` among them) and
applies them in reverse when ``save_pretrained`` writes it, so a model read from
another layout is saved back in that layout. There is no public way to say that
a model now saves under its own names: the renamings live in the private
attribute ``_weight_conversions`` that the save path reads.
``tests/yuren_core/test_transformers_compat.py`` fails loudly when a
transformers release changes that.

The trainer's one seam, ``TrainingArguments._setup_devices``, stays with the
class that overrides it (``yuren_trainer.arguments``), fenced the same way by
``tests/yuren_trainer/test_distributed.py``.
"""

from __future__ import annotations

from transformers import PreTrainedModel
from transformers.conversion_mapping import get_model_conversion_mapping

# The transformers major version this seam was written for.
TRANSFORMERS_MAJOR = 5


def save_under_own_names(model: PreTrainedModel) -> None:
    """Make ``model.save_pretrained`` write its weights under the model's own names.

    It drops the renamings ``model`` was loaded with, keeping what loading a
    checkpoint of the model's own class would have attached.
    """
    model._weight_conversions = get_model_conversion_mapping(model, hf_quantizer=getattr(model, "hf_quantizer", None))

"""Names every YuRen package shares: special tokens, label masking, defaults.

These strings are part of the checkpoint format: changing one breaks every model
trained with the old value, so they live here once and everything imports them.
"""

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMG_START = "<|img_start|>"
IMG_PATCH = "<|img_patch|>"
IMG_END = "<|img_end|>"
# Upstream padded with id 64000, which on Baichuan's 64000-token vocabulary *is*
# <|im_start|>. A dedicated token that never occurs in text avoids that.
PAD = "<|pad|>"

CHATML_TOKENS = (IM_START, IM_END)
IMAGE_TOKENS = (IMG_START, IMG_PATCH, IMG_END)
# Order matters: it fixes the ids the tokens get when added to a base vocabulary.
SPECIAL_TOKENS = (*CHATML_TOKENS, *IMAGE_TOKENS, PAD)

# The placeholder LLaVA-format data uses for "an image goes here" in a human turn.
IMAGE_PLACEHOLDER = "<image>"

IGNORE_INDEX = -100
# sentencepiece's stand-in for a space, and the dummy prefix it puts before a piece of text.
SPIECE_UNDERLINE = "\u2581"
VOCAB_MULTIPLE = 128
MAX_POSITION_EMBEDDINGS = 4096

DEFAULT_BASE_MODEL = "fireballoon/baichuan-llama-7b"
DEFAULT_BASE_OUTPUT = "dist/yuren-7b-base"
DEFAULT_CLIP_MODEL = "hf-hub:laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K"

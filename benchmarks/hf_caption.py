"""A minimal transformers script that captions one image: the baseline for whole-process time.

    python benchmarks/hf_caption.py CHECKPOINT IMAGE [bfloat16|float32] [MAX_NEW_TOKENS]

Written as a user would, minus AutoProcessor: the random-weight checkpoints have no tokenizer.json
or processor config (only tokenizer.model), so text and pixels are prepared with sentencepiece and
PIL here. A real processor would only add to this side's time. No ``torch.inference_mode()``: with
it, transformers' tied head copies the 1 GB embedding on every prefill (PERF_NOTES.md).
"""

import sys
from typing import Any

import numpy as np
import sentencepiece as spm
import torch
from PIL import Image
from transformers import PaliGemmaForConditionalGeneration

checkpoint, image = sys.argv[1], sys.argv[2]
dtype = getattr(torch, sys.argv[3] if len(sys.argv) > 3 else "bfloat16")
max_new_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 32

model = PaliGemmaForConditionalGeneration.from_pretrained(checkpoint, dtype=dtype)
sp = spm.SentencePieceProcessor(model_file=f"{checkpoint}/tokenizer.model")
config: Any = model.config  # transformers types sub-configs loosely
size = config.vision_config.image_size
img = Image.open(image).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
pixels = torch.from_numpy(np.asarray(img, np.float32).transpose(2, 0, 1)[None] / 127.5 - 1).to(dtype)
n_img = (size // config.vision_config.patch_size) ** 2
ids = [config.image_token_id] * n_img + [sp.bos_id()] + sp.encode("caption en") + [sp.piece_to_id("\n")]
input_ids = torch.tensor([ids])
out = model.generate(
    input_ids=input_ids,
    pixel_values=pixels,
    attention_mask=torch.ones_like(input_ids),
    token_type_ids=torch.zeros_like(input_ids),
    max_new_tokens=max_new_tokens,
    do_sample=False,
)
print(sp.decode(out[0, len(ids) :].tolist()))

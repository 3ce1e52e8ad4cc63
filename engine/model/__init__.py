"""The model itself: configs, tensor ops, masks, the KV cache, the SigLIP tower, the Gemma decoder
and the backbone that joins them. Pure math on tensors; knows nothing of files, text or hardware."""

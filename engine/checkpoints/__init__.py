"""Where weights come from: the preset catalogue, Hub downloads and caches, checkpoint tensor
names, and reading and writing safetensors checkpoints."""

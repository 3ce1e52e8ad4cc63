"""How the model runs on the hardware: device and dtype choice, CPU capabilities, memory for
weights, scratch buffers, kernel swaps applied after loading, and quantization."""

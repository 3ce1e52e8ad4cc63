"""Text and images in and out of the model: the tokenizer, image loading and resizing, the prompt
layout, task prompts and the parsing of task outputs."""

"""HF checkpoint -> GGUF conversion (`edgellm convert`). Heavy imports stay inside the modules that need them."""

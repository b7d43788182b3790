"""Models and transformer parts: loading a model spec (alias, folder, Hub id), the offline presets, the
architecture and attention registries, the shared transformer layers, rotary embeddings and the KV cache."""

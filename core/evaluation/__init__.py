"""Evaluation: the scoring of items through a backend (hf, openai), the request cache, and one evaluation
run's folder."""

"""Training: the trainer skeleton, the one loop, log-probs and the head loss, pre-training text, run reports."""

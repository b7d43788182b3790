"""Training: the trainer skeleton and the one training loop, schedules, batching, per-token log-probs, the
head loss, pre-training text and its windows, and the reports a run writes."""

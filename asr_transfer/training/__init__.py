"""Training: the loop, its resumable state, dev scoring, the frozen-prefix cache, checkpoints, the
unfreezing schedule, training examples and batches, run logs, and pre-training of the source model."""

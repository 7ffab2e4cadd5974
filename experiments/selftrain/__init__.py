"""``galaxy10 self-train``: Noisy Student self-training with pseudo-labels on unlabelled survey images."""

"""CNN embeddings, gradient-boosted and scikit-learn models on them, stacking and CNN voting."""

"""``galaxy10 pretrain``: self-supervised pretraining of a registry backbone on unlabelled survey images."""

"""``galaxy10 evaluate``: repeated cross-validation of recipes on one labelled file, with paired verdicts."""

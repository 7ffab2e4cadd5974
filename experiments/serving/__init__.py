"""Prediction for people: the one predictor, command-line inputs and outputs, and the web page.

Modules: ``predictor`` (a logged model + its own preprocessing -> class probabilities; every path
that scores a model calls it), ``inputs`` (images, folders and HDF5 rows named on the command line),
``results`` (top-k tables, CSV/JSON) and ``web`` (the upload page behind ``galaxy10 serve``).
"""

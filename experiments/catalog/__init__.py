"""``galaxy10 catalog``: a morphology catalog (Parquet) of any number of images, chunked and resumable.

Modules: ``inputs`` (HDF5 files, folders, CSV/Parquet lists -> rows in a fixed order), ``columns`` (the
schema, probability column names, entropy and test-time view disagreement) and ``job`` (decoding in
parallel with the model, parts written atomically, resume, the merge).
"""

"""Data in: Galaxy10 HDF5 reader, synthetic generator, folder importer, splits, preprocessing."""

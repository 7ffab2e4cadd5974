"""Data in: the Galaxy10 HDF5 reader, the folder importer, class sets, splits, preprocessing, the dataset and
the input pipeline."""

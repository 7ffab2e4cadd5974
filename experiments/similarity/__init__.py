"""``galaxy10 similar``: nearest neighbours of query galaxies in a catalog's embedding column (faiss)."""

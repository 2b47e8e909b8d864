"""The clusterer: turns a few human labels into many (PCA -> KMeans -> propagation -> refinement -> review)."""

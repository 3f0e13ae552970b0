"""Data: the embedded synthetic task, its gold judge, loaders and file schemas."""

"""Accuracy evaluation: global confusion-matrix metrics, label encodings, datasets, protocols."""

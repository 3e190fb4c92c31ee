"""Training data: making dataset folders (from vector labels or public datasets) and reading them.

:mod:`changeclip.datasets.manifest` is the contract between the makers and ``changeclip train``.
"""

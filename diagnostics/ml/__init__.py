"""Framework-free machine-learning core: preprocessing, model bundles, inference, training.

Nothing in this package imports Django, so it can be run, tested and benchmarked alone.
"""

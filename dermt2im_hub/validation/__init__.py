"""Downstream checks of synthetic images (the paper's label fidelity, SAM segmentation and detection).

Runs after the evaluation stage and before the pipeline: it reads generated folders, A1111 folders, built
datasets and real image folders (or a benchmark's real-only classifier folder) and writes its own folder.
"""

"""Jinja templates for the LoRA, dataset, classifier and results cards (read through importlib.resources)."""

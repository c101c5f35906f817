"""Checkpoint formats: torch-free `.pth` reading / writing (pth.py) and the HF / timm key layouts (layouts.py)."""

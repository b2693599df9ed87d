"""Reports of a run: roofline bounds and efficiency (roofline.py)."""

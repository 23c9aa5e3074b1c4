"""Photos to features: the one safe image loader, the encoder registry and its weights (a new encoder goes in
``encoders.py``), feature extraction and its cache.
"""

"""The commands of ``train.py``, one module each: train a decoder, fine-tune it with SCST, build an ensemble,
evaluate a bundle, sweep its decoding, build its retrieval index. A new command goes here, and into
``recipes.run``.
"""

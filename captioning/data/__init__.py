"""Records in: Flickr8k and other datasets (COCO, a user's captions files), text and the Vocabulary, word embeddings.

A new dataset reader goes here; nothing in here imports the models, training or TensorFlow.
"""

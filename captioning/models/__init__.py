"""The decoders (Keras layers) and the step protocol decoding speaks to; a new decoder goes here.
"""

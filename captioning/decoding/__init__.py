"""Decoding: ``options.py`` declares every decoding option once (type, default, range, help), ``search.py``
holds the strategies. A new decoding strategy goes into both.
"""

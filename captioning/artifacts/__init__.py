"""The model bundle on disk: the bundle (load / save) and its manifest types.
"""

"""Scores: caption metrics, human agreement, evaluation runs over a split, trust (nearest photos, calibrated level).
"""

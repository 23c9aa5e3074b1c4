"""Training: settings, the fit loop, SCST, run directories, the recipes ``train.py`` runs, fine-tuning and its jobs.
"""

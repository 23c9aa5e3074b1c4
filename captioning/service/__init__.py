"""What callers use: the Captioner facade, batch captioning, the job runner, the REST API (a new endpoint goes in
``serve.py``, its form fields in ``api_options.py``).
"""

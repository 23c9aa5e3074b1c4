"""The memory: captioned photos the model reads at caption time, with no training ("Your photos").

``store`` (the datastore: features + captions, exact or approximate nearest-neighbour search through ``ann``, the
user-first rule), ``user`` (a user's captions file into a store), ``bank`` (the persisted "Your photos" of an
encoder, artifacts/.memory), ``use`` (decoding with the store: consensus reranking towards remembered captions),
``cli`` (``caption --memory``) and ``routes`` (the API's /v1/memory endpoints).
"""

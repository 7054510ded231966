"""Frozen stage-1 features: encoding captions and videos in batches (encode.py) and the on-disk cache that the
`extract` stage writes and stage 2 / evaluation read (cache.py)."""

"""Search your own videos with a trained DiffusionRet model (README, "Search your own videos").

    diffusionret index  --videos DIR --model models/<benchmark> --out INDEX_DIR   # build / update an index
    diffusionret search --index INDEX_DIR "a red circle moves left" [--top 10] [--no-rerank] [--json]
    diffusionret serve  --index INDEX_DIR                                           # http://127.0.0.1:8765

Modules, one job each:
  model.py     load a trained model directory (disc/ + gen/) and fingerprint its checkpoints
  files.py     walk a folder for video files, stat and hash them
  store.py     the on-disk index: manifest, feature generations, resumable work shards, thumbnails
  index.py     build / update an index incrementally (decoding: data/frames.py, encoding: features/encode.py)
  query.py     stage-1 WTI ranking (exact or faiss-prefiltered) + seeded diffusion re-ranking of the top-k
  ann.py       the optional faiss prefilter (sentence vs. mean-frame inner product)
  server.py    the local JSON API and page (standard library http.server), page.py the HTML
  commands.py  the `index`, `search` and `serve` sub-commands of the `diffusionret` console command
"""

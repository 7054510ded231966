"""Diagnostics of the synthetic benchmarks: why a re-ranker gains or not, from the generator's known meanings.

One job per module:
- `meanings`: each video's (colour, shape, motion) from the generator's meanings.json, per split and caption;
- `ranking`: descending orders with ties broken at random, best rank of a query's positives;
- `attributes`: top-1 attribute accuracy of a score matrix and the composition of each query's top-k;
- `generator_rank`: the generator's p = softmax(x0_hat) alone as a ranker of the top-k, beside stage 1's order;
- `noise_levels`: the denoiser's top-1 accuracy on noised x0 by noise level, and with the query shuffled;
- `probes`: linear probes (logistic regression) of each attribute from cached features.
The `diagnose` stage (pipeline/diagnose.py) runs them on one evaluation cell.
"""

"""ArcVQ performance benchmarks (issue 7): ``python -m benchmarks`` runs them all and writes
``docs/BENCHMARKS.md``.

- :mod:`benchmarks.train_step`: VQGAN train-step time, ArcQuantizer over taming's VectorQuantizer2.
- :mod:`benchmarks.arc_loss_memory`: ArcLoss peak memory and time, chunked over dense.
- :mod:`benchmarks.quantizer_throughput`: ArcQuantizer over vector-quantize-pytorch's
  ``VectorQuantize(use_cosine_sim=True)`` (needs ``pip install vector-quantize-pytorch``).

Every figure is a ratio of two arms measured side by side in one run, repeats interleaved
(A B, B A, A B, ...), median of the repeats (:mod:`benchmarks.measure`).
"""

"""ArcVQ performance benchmarks: ``python -m benchmarks --device cpu|cuda`` runs them all on one
device and writes that device's section of ``docs/BENCHMARKS.md``.

- :mod:`benchmarks.train_step`: VQGAN train-step time, ArcQuantizer over taming's VectorQuantizer2.
- :mod:`benchmarks.arc_loss_memory`: ArcLoss peak memory and time, chunked over dense.
- :mod:`benchmarks.quantizers`: ArcQuantizer over taming's VectorQuantizer2 and vector-quantize-pytorch's
  ``VectorQuantize(use_cosine_sim=True)`` (needs ``pip install vector-quantize-pytorch``).

Every figure is a ratio of two arms measured side by side in one run, repeats interleaved
(A B, B A, A B, ...), median of the repeats (:mod:`benchmarks.measure`). :mod:`benchmarks.plans`
holds each device's sizes, :mod:`benchmarks.targets` the targets, :mod:`benchmarks.report` one
device's section and :mod:`benchmarks.document` the whole report. ``python -m benchmarks.ibq_memory``
measures IBQ's dense one-hot memory on its own.
"""

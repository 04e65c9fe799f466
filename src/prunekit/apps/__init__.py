"""Applications: prunekit's pieces used end to end on small problems built here, one module each.

- :mod:`.federated`: pruning inside federated averaging over simulated non-IID clients (FedTiny-style),
  communication bytes counted dense vs sparse.
- :mod:`.detection`: a small FCOS-layout detector on Fashion-MNIST mosaics, group channel pruning and
  spatial attention distillation, mAP in pure torch.
- :mod:`.windows`: a Swin-style restoration network on locally blurred images, adaptive window pruning.
- :mod:`.superres`: an EDSR-style ×2 super-resolution network trained sparse from scratch (ISS-P, IHT, GMP).
- :mod:`.transfer`: source-set pruning for transfer learning (label mapping / feature mapping scores).
- :mod:`.distilled`: image-level pruning of a soft-labelled (distilled) data set.
- :mod:`.robustness`: Fashion-MNIST corruptions and the accuracy of pruned models under them.
- :mod:`.emo`: NSGA-II over per-layer sparsities, (error, density) Pareto fronts.

Applications know the library (structured, methods, data, train, metrics); nothing in the library
knows them.
"""

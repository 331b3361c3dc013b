"""Model monitoring: data/prediction drift, label-free performance estimation, concept drift.

- :mod:`mnistops.monitor.drift` -- two-sample drift detectors on windows of predictions
  (calibrated softmax, embeddings, raw images) and their combination into one verdict.
- :mod:`mnistops.monitor.features` -- interpretable per-image statistics (ink, size, position, stroke).
- :mod:`mnistops.monitor.performance` -- temperature scaling, calibration error, CBPE-style accuracy
  estimates without labels, realized metrics once labels arrive.
- :mod:`mnistops.monitor.concept` -- windowed metrics and ADWIN/DDM change points on delayed labels.
"""

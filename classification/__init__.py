"""Fine-grained cell classifiers: crop -> class probabilities for one taxonomy (``pbc8``, ``wang11``, ``covid_rl``).

Contract: ``classifier.classify(crops)`` takes RGB uint8 HxWx3 crops (any size; padded to square and resized to the
checkpoint's input size) and returns float32 probabilities (N, K), temperature-scaled, columns in
``classifier.classes`` order. Heavy libraries are imported inside the functions that need them.
"""

"""Models: torchvision classifiers, safe loading, and the AuG-KD generative parts."""

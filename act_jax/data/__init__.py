"""Input pipelines: datasets read, shuffled, augmented and batched for training and evaluation."""

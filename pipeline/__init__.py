"""HIRI-ViT reproduction pipeline: models, data, training, transfer, tracking and launching."""

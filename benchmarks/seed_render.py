"""The seeds' nested-loop activation rendering (Listing 5.31), kept verbatim as the reference."""

import numpy as np


def seed_display_grid(layer_activation: np.ndarray, images_per_row: int = 16) -> np.ndarray:
    """Seed code, one layer: ``layer_activation`` is (1, size, size, n_features)."""
    layer_activation = layer_activation.copy()
    n_features = layer_activation.shape[-1]
    size = layer_activation.shape[1]
    n_cols = n_features // images_per_row
    display_grid = np.zeros((size * n_cols, images_per_row * size))
    for col in range(n_cols):
        for row in range(images_per_row):
            channel_image = layer_activation[0, :, :, col * images_per_row + row]
            channel_image -= channel_image.mean()
            channel_image /= channel_image.std()
            channel_image *= 64
            channel_image += 128
            channel_image = np.clip(channel_image, 0, 255).astype("uint8")
            display_grid[col * size: (col + 1) * size, row * size: (row + 1) * size] = channel_image
    return display_grid

"""Qt side of napari-sam2: the dock widget and its layer adapters (imported only by napari)."""

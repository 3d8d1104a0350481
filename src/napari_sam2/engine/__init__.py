"""Qt-free engine: preprocessing, prompts, ImagePredictor, VideoTracker, label writing."""

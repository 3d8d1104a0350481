"""Qt-free engine: turns user data (arrays, prompts) into model calls."""

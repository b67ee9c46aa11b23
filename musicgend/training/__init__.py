"""Training, evaluation and offline generation."""

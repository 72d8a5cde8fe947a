"""Image data for calibration, evaluation and fine-tuning."""

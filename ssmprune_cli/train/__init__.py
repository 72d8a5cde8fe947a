"""Brief fine-tuning and training loops."""

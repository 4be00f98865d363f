"""The trainer: DreamBooth and LoRA on diffusers + peft (see trainer.py). Imports torch."""

from aws_extension.engine.train.trainer import (
    STATUS_COMPLETE,
    STATUS_STOPPED,
    TrainingError,
    TrainInputs,
    TrainProgress,
    TrainResult,
    model_file_name,
    train,
)

__all__ = ["STATUS_COMPLETE", "STATUS_STOPPED", "TrainInputs", "TrainProgress", "TrainResult", "TrainingError",
           "model_file_name", "train"]

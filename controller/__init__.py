"""vast-queue-scaler: keep Vast.ai Serverless sessions equal to the work in your own queue."""

__version__ = "0.1.0"

"""Running the network: devices and precision, model loading, the batched predictor, the model cache."""

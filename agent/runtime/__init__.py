"""Models on the device: checksummed files, the models' manifest, and one inference interface over ONNX Runtime and OpenVINO."""

"""On-device runtime: ``runtime/detect.py`` needs only numpy and onnxruntime."""

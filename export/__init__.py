"""Export: the generator as ONNX (onnx.py), TensorRT engines (tensorrt.py), Triton-server repositories
(triton_repo.py); the onnxruntime and tensorrt engine backends (ort_runner.py, trt_runner.py); parity checks
against the PyTorch fp32 reference (parity.py). Submodules import their heavy dependencies lazily."""

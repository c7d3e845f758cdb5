"""What a library would otherwise choose per host, pinned for tests that compile or run an engine directly.

OpenVINO runs bf16 on an AVX512-BF16 or AMX CPU unless told otherwise (outputs then differ by up to 3e-2
from FP32), and both libraries size their thread pools from the host. Tests that compare outputs with
numpy must get FP32 on every host kind, so every direct compile in tests/ takes its settings from here.
"""

OPENVINO_CPU = {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": 2}


def ort_session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

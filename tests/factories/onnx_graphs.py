"""Small ONNX graphs by hand, for tests: ``value`` and ``const`` make its tensors, ``save`` checks and writes it."""

import numpy as np
import onnx
from onnx import helper, numpy_helper


def value(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def save(path, nodes, inputs, outputs, initializers):
    """The graph as an opset-17 model at ``path`` (checked by ``onnx.checker`` first); returns ``path``."""
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path

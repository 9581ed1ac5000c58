"""Reading back what the exporter wrote: custom ops, their options and constant operands."""

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from flatbuffers import flexbuffers

_NUMPY_TYPES = {0: np.float32, 2: np.int32, 9: np.int8, 3: np.uint8, 4: np.int64}


def custom_ops(model_content):
    """Lists the custom operators of a .tflite flatbuffer (all subgraphs).

    Args:
        model_content: the .tflite bytes.

    Returns:
        A list of dicts, one per custom operator in execution order: ``name`` (custom code),
        ``options`` (the custom_options FlexBuffer map decoded to a dict), ``options_bytes``,
        ``inputs`` (per input: a numpy array for a constant tensor, None for a run-time tensor
        or an omitted optional input) and ``input_shapes``.
    """
    data = bytes(model_content)
    model = schema.Model.GetRootAs(data, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        custom = code.CustomCode()
        codes.append(custom.decode() if custom is not None else None)
    result = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            name = codes[op.OpcodeIndex()]
            if name is None:
                continue
            raw = b"" if op.CustomOptionsIsNone() else op.CustomOptionsAsNumpy().tobytes()
            options = flexbuffers.Loads(raw) if raw else {}
            inputs, shapes = [], []
            for index in op.InputsAsNumpy():
                if index < 0:
                    inputs.append(None)
                    shapes.append(None)
                    continue
                tensor = graph.Tensors(int(index))
                shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
                shapes.append(shape)
                buffer = model.Buffers(tensor.Buffer())
                if buffer is None or buffer.DataLength() == 0:
                    inputs.append(None)
                    continue
                dtype = _NUMPY_TYPES.get(tensor.Type())
                values = buffer.DataAsNumpy().tobytes()
                array = None if dtype is None else np.frombuffer(values, dtype).reshape(shape)
                inputs.append(array)
            result.append(
                {"name": name, "options": options, "options_bytes": raw, "inputs": inputs,
                 "input_shapes": shapes}
            )
    return result


def custom_codes(model_content):
    """The custom codes (custom op names) that a .tflite flatbuffer's operator table lists."""
    model = schema.Model.GetRootAs(bytes(model_content), 0)
    codes = (model.OperatorCodes(i).CustomCode() for i in range(model.OperatorCodesLength()))
    return {code.decode() for code in codes if code is not None}


def builtin_op_names(model_content):
    """Names of all operators (builtin names or custom codes) in the main subgraph, in order."""
    data = bytes(model_content)
    model = schema.Model.GetRootAs(data, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.Subgraphs(0)
    result = []
    for o in range(graph.OperatorsLength()):
        code = model.OperatorCodes(graph.Operators(o).OpcodeIndex())
        if code.CustomCode() is not None:
            result.append(code.CustomCode().decode())
        else:
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            result.append(names.get(builtin, str(builtin)))
    return result

"""The detector node's parameters as ROS parameters: descriptors made from the one table
(:mod:`pebal_perception.core.settings`), type errors that name both types, the QoS overrides checked at
start-up, and parameter services that apply a request whole or not at all."""
from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.exceptions import ParameterNotDeclaredException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.parameter_service import ParameterService

from pebal_perception.core.settings import ParamSpec, type_mismatch

PARAMETER_TYPES = {"string": ParameterType.PARAMETER_STRING, "integer": ParameterType.PARAMETER_INTEGER,
                   "double": ParameterType.PARAMETER_DOUBLE, "bool": ParameterType.PARAMETER_BOOL,
                   "double_array": ParameterType.PARAMETER_DOUBLE_ARRAY}
#: Type names for messages: the table's own, and the other ROS parameter types a request may carry.
TYPE_NAMES = {**{kind: name for name, kind in PARAMETER_TYPES.items()},
              ParameterType.PARAMETER_NOT_SET: "not set", ParameterType.PARAMETER_BYTE_ARRAY: "byte_array",
              ParameterType.PARAMETER_BOOL_ARRAY: "bool_array", ParameterType.PARAMETER_INTEGER_ARRAY: "integer_array",
              ParameterType.PARAMETER_STRING_ARRAY: "string_array"}


#: Values a QoS override may take, per policy (rclpy's enum names, lower case).
QOS_OVERRIDE_CHOICES = {"reliability": ("reliable", "best_effort", "system_default"),
                        "history": ("keep_last", "keep_all", "system_default")}


def qos_override_problem(policy: str, value: Any) -> str | None:
    """Why ``value`` cannot be the ``policy`` of a subscription's QoS override, or None."""
    if policy == "depth":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"expected a non-negative integer, got {value!r}"
        return None
    choices = QOS_OVERRIDE_CHOICES[policy]
    if not isinstance(value, str) or value.lower() not in choices:
        return f"expected one of {', '.join(choices)}, got {value!r}"
    return None


def parameter_descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """The descriptor of one entry of the parameter table (params.PARAMETERS)."""
    descriptor = ParameterDescriptor(description=spec.description, type=PARAMETER_TYPES[spec.type],
                                     read_only=spec.read_only, dynamic_typing=spec.dynamic_typing)
    if spec.value_range is not None:
        low, high = spec.value_range
        if spec.type == "integer":
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high),
                                                                  step=0.0)]
    return descriptor


def type_error(node: Node, parameter: Parameter) -> str | None:
    """Why ``parameter`` cannot be set on ``node`` for its type, naming both types (rclpy would say
    "Wrong parameter type, expected 'Type.DOUBLE' got 'Type.INTEGER'"); None when the type fits or the
    parameter is undeclared or dynamically typed."""
    if not node.has_parameter(parameter.name) or parameter.type_ == Parameter.Type.NOT_SET:
        return None
    descriptor = node.describe_parameter(parameter.name)
    if descriptor.dynamic_typing or parameter.type_.value == descriptor.type:
        return None
    return type_mismatch(parameter.name, TYPE_NAMES.get(descriptor.type, str(descriptor.type)),
                         TYPE_NAMES.get(parameter.type_.value, parameter.type_.name.lower()), parameter.value)


class AllOrNoneParameterService(ParameterService):
    """rclpy's parameter services, except that a SetParameters request is checked and applied as a
    whole (rclpy sets its parameters one by one: a valid threshold would be applied next to a refused
    roi): the whole list goes through set_parameters_atomically, and every result in the reply is the
    request's. A wrong type is refused with both types named (:func:`type_error`)."""

    def _apply(self, msgs) -> SetParametersResult:
        node = self._get_node()
        try:
            params = [Parameter.from_parameter_msg(p) for p in msgs]
            wrong = next((text for text in (type_error(node, p) for p in params) if text), None)
            if wrong:
                return SetParametersResult(successful=False, reason=wrong)
            return node.set_parameters_atomically(params) if params else SetParametersResult(successful=True)
        except ParameterNotDeclaredException as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - a malformed request gets a reason, not a dead service
            return SetParametersResult(successful=False, reason=f"{type(exc).__name__}: {exc}")

    def _set_parameters_callback(self, request, response):
        result = self._apply(request.parameters)
        reason = result.reason
        if not result.successful and len(request.parameters) > 1:
            reason = f"{reason} (a request applies whole or not at all: none of its parameters was changed)"
        response.results = [SetParametersResult(successful=result.successful, reason=reason)
                            for _ in request.parameters]
        return response

    def _set_parameters_atomically_callback(self, request, response):
        response.result = self._apply(request.parameters)
        return response

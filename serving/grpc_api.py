"""gRPC front end: tensorflow.serving.PredictionService and ModelService over the ServableManager."""
from __future__ import annotations

import functools
import logging

import grpc
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
    status_pb2,
)

from serving import predict
from serving.model_config import ConfigError, from_proto
from serving.servables import ServableManager
from serving.status import ServingError, invalid_argument

log = logging.getLogger("serving")


def _status_codes(method):
    """ServingError -> its status; anything unexpected -> INTERNAL. The server keeps running."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as e:
            context.abort(e.code, e.message)
        except Exception as e:
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
    return wrapper


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ServableManager, max_elements: int = 0):
        self.manager, self.max_elements = manager, max_elements

    @_status_codes
    def Predict(self, request, context):
        servable = predict.resolve(self.manager, request.model_spec, request.HasField("model_spec"))
        return predict.predict_request(servable, request, self.max_elements)

    @_status_codes
    def GetModelMetadata(self, request, context):
        return predict.metadata(self.manager, request)

    def _unimplemented(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "only Predict signatures are served")

    Classify = Regress = MultiInference = _unimplemented


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ServableManager):
        self.manager = manager

    @_status_codes
    def GetModelStatus(self, request, context):
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for v, state in self.manager.version_states(spec.name, version):
            entry = response.model_version_status.add()
            entry.version = v
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
            entry.status.CopyFrom(status_pb2.StatusProto(error_code=state.error_code.value[0],
                                                         error_message=state.error_message))
        return response

    @_status_codes
    def HandleReloadConfigRequest(self, request, context):
        try:
            configs = from_proto(request.config)
        except ConfigError as e:
            raise invalid_argument(str(e)) from None
        self.manager.reload(configs)
        return model_management_pb2.ReloadConfigResponse()


def add_services(server: grpc.Server, manager: ServableManager, max_elements: int = 0) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(manager, max_elements),
                                                                        server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)

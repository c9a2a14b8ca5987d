"""gRPC front end: tensorflow.serving.PredictionService and ModelService over the ServableManager."""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
    status_pb2,
)

from serving import predict
from serving.memory import Trimmer
from serving.model_config import ConfigError, from_proto
from serving.request_cost import GRPC_COPIES, InFlight, RequestLimits
from serving.servables import ServableManager
from serving.status import ServingError, grpc_status_codes, invalid_argument

log = logging.getLogger("serving")


_status_codes = grpc_status_codes(log)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ServableManager, limits: RequestLimits | None = None,
                 inflight: InFlight | None = None):
        self.manager, self.limits, self.inflight = manager, limits, inflight
        self._trimmer = Trimmer()  # a large request's memory goes back to the system once freed

    @_status_codes
    def Predict(self, request, context):
        size = request.ByteSize()
        try:
            servable = predict.resolve(self.manager, request.model_spec, request.HasField("model_spec"))
            if self.inflight is None:
                return predict.predict_request(servable, request, self.limits)
            with self.inflight.hold(size * GRPC_COPIES):
                return predict.predict_request(servable, request, self.limits)
        finally:
            self._trimmer.after(size)

    @_status_codes
    def GetModelMetadata(self, request, context):
        return predict.metadata(self.manager, request)

    def _unimplemented(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "only Predict signatures are served")

    Classify = Regress = MultiInference = _unimplemented


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """Reloads run one at a time on a worker of their own: a reload asked for while one runs is
    ABORTED at once (not queued), so a storm of reloads holds at most one of the gRPC threads (the
    one waiting for its reload) and never the poll lock on Predict's behalf."""

    def __init__(self, manager: ServableManager, allow_reload: bool = True):
        self.manager, self.allow_reload = manager, allow_reload
        self._reloading = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reload")

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
        """Refused with nothing read when reloads are off, or when a base path lies outside the
        operator's roots (the path would load, and run, whatever SavedModel is there)."""
        if not self.allow_reload:
            raise ServingError(grpc.StatusCode.PERMISSION_DENIED,
                               "reloading the model config is switched off on this server (--allow_reload=false)")
        try:
            configs = from_proto(request.config)
            self.manager.check(configs)  # a refused config answers at once, even during another reload
        except ConfigError as e:
            raise invalid_argument(str(e)) from None
        if not self._reloading.acquire(blocking=False):
            raise ServingError(grpc.StatusCode.ABORTED, "another reload of the model config is in progress: "
                                                        "try again once it has finished")
        try:
            self._worker.submit(self.manager.reload, configs).result()
        except ConfigError as e:
            raise invalid_argument(str(e)) from None
        finally:
            self._reloading.release()
        return model_management_pb2.ReloadConfigResponse()


def add_services(server: grpc.Server, manager: ServableManager, limits: RequestLimits | None = None,
                 allow_reload: bool = True, inflight: InFlight | None = None) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(manager, limits, inflight), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager, allow_reload), server)

"""A minimal OTLP/gRPC trace receiver built on the official
opentelemetry-proto definitions: it accepts TraceService.Export and writes
one JSON line per span (trace id, span id, parent span id, name, service).

    python otlp_receiver.py PORT_FILE OUT_FILE

Binds 127.0.0.1 on a free port and writes the port to PORT_FILE.
"""

import json
import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        with open(self.out, "a") as f:
            for rs in request.resource_spans:
                service = ""
                for attr in rs.resource.attributes:
                    if attr.key == "service.name":
                        service = attr.value.string_value
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        f.write(
                            json.dumps(
                                {
                                    "trace_id": span.trace_id.hex(),
                                    "span_id": span.span_id.hex(),
                                    "parent_span_id": span.parent_span_id.hex(),
                                    "name": span.name,
                                    "service": service,
                                }
                            )
                            + "\n"
                        )
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    port_file, out = sys.argv[1:3]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(out), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    import os

    os.rename(port_file + ".tmp", port_file)
    server.wait_for_termination()


if __name__ == "__main__":
    main()

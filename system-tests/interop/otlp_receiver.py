"""An OTLP/HTTP traces receiver for the tests (system-tests/src/otlp.rs): decodes each
export with opentelemetry-proto (an implementation independent of the services' Rust
exporter) and appends every span to a file, one JSON object per line.

    otlp_receiver.py PORT_FILE SPANS_FILE [--stall | --discard | --unavailable] [--port N]

It binds 127.0.0.1 on a free port (or N) and writes the port to PORT_FILE once it listens.
With --stall it reads each request and never answers (a collector that hangs); with
--discard it answers each one without decoding or keeping it (the benchmarks' collector);
with --unavailable it answers 503 with Retry-After: 5 (a collector shedding load).
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PORT_FILE, SPANS_FILE = sys.argv[1], sys.argv[2]
STALL = "--stall" in sys.argv[3:]
DISCARD = "--discard" in sys.argv[3:]
UNAVAILABLE = "--unavailable" in sys.argv[3:]
PORT = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else 0
LOCK = threading.Lock()


def value(v):
    """An AnyValue as plain JSON."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind is None:
        return None
    return getattr(v, kind)


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def spans_of(request):
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "service": resource.get("service.name"),
                    "scope": scope_spans.scope.name,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": span.kind,
                    "start_ns": span.start_time_unix_nano,
                    "end_ns": span.end_time_unix_nano,
                    "attributes": attributes(span.attributes),
                    "links": [
                        {"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex()}
                        for l in span.links
                    ],
                    "status_code": span.status.code,
                }


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if STALL:
            time.sleep(3600)
            return
        if UNAVAILABLE:
            self.send_response(503)
            self.send_header("Retry-After", "5")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_response(415 if self.path == "/v1/traces" else 404)
            self.end_headers()
            return
        if not DISCARD:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            lines = [json.dumps(s) + "\n" for s in spans_of(request)]
            with LOCK, open(SPANS_FILE, "a") as out:
                out.writelines(lines)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
server.daemon_threads = True
with open(PORT_FILE + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(PORT_FILE + ".tmp", PORT_FILE)
server.serve_forever()

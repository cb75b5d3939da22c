"""Ask a replica for its health with grpcio-health-checking, over mTLS:

    python docs/examples/health_check.py 127.0.0.1:7001 ca.pem client.pem client-key.pem [SERVICE]

Prints SERVING or NOT_SERVING (the service "" is the whole replica; it is
SERVING only while the replica is part of a quorum).
"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main():
    addr, ca, cert, key = sys.argv[1:5]
    service = sys.argv[5] if len(sys.argv) > 5 else ""
    creds = grpc.ssl_channel_credentials(
        root_certificates=open(ca, "rb").read(),
        private_key=open(key, "rb").read(),
        certificate_chain=open(cert, "rb").read(),
    )
    with grpc.secure_channel(addr, creds) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError as e:
            print("ERROR", e.code().name)
            sys.exit(2)
        print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


if __name__ == "__main__":
    main()

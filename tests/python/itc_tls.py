"""TLS, mTLS and bearer tokens from Python stubs, against a server started with
--tls-cert-file/--tls-key-file, --tls-client-ca-file and --auth-tokens-file.

- With the CA, a client certificate and the token: calls work (start, progress, status).
- Without a client certificate, with one from another CA, or in plaintext: no call
  gets through (UNAVAILABLE).
- Without the token, or acting as another agent: UNAUTHENTICATED, PERMISSION_DENIED.

Run by scripts/check-python.sh (which makes the certificates and the tokens file):

    PYTHONPATH=<generated stubs> python tests/python/itc_tls.py 127.0.0.1:PORT PKI_DIR TOKEN

Prints "python-check: N passed, 0 failed" on success; exits 1 on the first failure.
"""

import argparse
import pathlib
import sys
import uuid

import grpc

from itc.v1 import agent_service_pb2, agent_service_pb2_grpc
from itc.v1 import monitor_service_pb2, monitor_service_pb2_grpc
from itc.v1 import types_pb2
from itc_check_lib import CALL_TIMEOUT, check, expect_error, passed

AGENT_ID = "py-tls-agent"
SERVER_NAME = "localhost"  # a name on the server's certificate


def tls_channel(address, pki, client=None):
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / f"{client}.key").read_bytes() if client else None,
        certificate_chain=(pki / f"{client}.pem").read_bytes() if client else None,
    )
    return grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", SERVER_NAME)])


def refused(channel, what):
    """No call gets through this channel: UNAVAILABLE (the handshake fails)."""
    stub = monitor_service_pb2_grpc.MonitorServiceStub(channel)
    try:
        stub.GetStatus(monitor_service_pb2.GetStatusRequest(), timeout=CALL_TIMEOUT)
    except grpc.RpcError as err:
        check(err.code() == grpc.StatusCode.UNAVAILABLE, f"{what}: {err.code().name}: {err.details()}")
        print(f"ok - {what}: refused ({err.code().name})")
        return
    raise AssertionError(f"{what}: the call got through")


def run(address, pki, token):
    auth = [("authorization", f"Bearer {token}")]
    channel = tls_channel(address, pki, "client")
    agent = agent_service_pb2_grpc.AgentServiceStub(channel)
    monitor = monitor_service_pb2_grpc.MonitorServiceStub(channel)

    task_id = f"py-tls-{uuid.uuid4().hex[:8]}"
    task = agent.StartTask(
        agent_service_pb2.StartTaskRequest(task_id=task_id, agent_id=AGENT_ID, description="over mTLS"),
        timeout=CALL_TIMEOUT,
        metadata=auth,
    ).task
    check(task.status == types_pb2.TASK_STATUS_RUNNING, f"StartTask over mTLS: {task}")
    r = agent.ReportProgress(
        agent_service_pb2.ReportProgressRequest(task_id=task_id, progress=0.5, message="half"),
        timeout=CALL_TIMEOUT,
        metadata=auth,
    )
    check(r.version == 2, f"ReportProgress over mTLS: {r}")
    status = monitor.GetStatus(monitor_service_pb2.GetStatusRequest(), timeout=CALL_TIMEOUT, metadata=auth)
    listed = [(t.task_id, t.progress) for t in status.tasks]
    check(listed == [(task_id, 0.5)], f"GetStatus over mTLS, as {AGENT_ID}: {listed}")
    print(f"ok - over mTLS with a token: {task_id} started, at 0.5, and listed")

    expect_error(
        grpc.StatusCode.UNAUTHENTICATED,
        "GetStatus over mTLS without the token",
        monitor.GetStatus,
        monitor_service_pb2.GetStatusRequest(),
    )
    expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        "StartTask as another agent",
        agent.StartTask,
        agent_service_pb2.StartTaskRequest(agent_id="someone-else", description="x"),
        metadata=auth,
    )

    refused(tls_channel(address, pki), "TLS without a client certificate")
    refused(tls_channel(address, pki, "rogue"), "a client certificate from another CA")
    refused(grpc.insecure_channel(address), "plaintext")
    channel.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address")
    parser.add_argument("pki", type=pathlib.Path)
    parser.add_argument("token")
    args = parser.parse_args()
    try:
        run(args.address, args.pki, args.token)
    except AssertionError as err:
        print(f"FAIL - {err}", file=sys.stderr)
        print(f"python-check: {passed()} passed, 1 failed", file=sys.stderr)
        return 1
    print(f"python-check: {passed()} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the Python check programs (tests/python/itc_*_check.py) share: counted checks,
expected gRPC errors, channels, JSON <-> protobuf Struct/Value, and the main() that runs
a program against a server address and prints "python-check: N passed, M failed"."""

import argparse
import sys

import grpc
from google.protobuf import json_format, struct_pb2

CALL_TIMEOUT = 10.0  # seconds, the deadline of every unary call
CONNECT_TIMEOUT = 10.0  # seconds to get a channel ready

_passed = 0


def check(condition, message):
    """A plain assert that also counts the checks that passed."""
    global _passed
    assert condition, message
    _passed += 1


def passed():
    """How many checks passed so far."""
    return _passed


def struct(obj):
    """A dict as a protobuf Struct."""
    s = struct_pb2.Struct()
    s.update(obj)
    return s


def value(obj):
    """Any JSON value as a protobuf Value."""
    v = struct_pb2.Value()
    json_format.ParseDict(obj, v)
    return v


def as_python(message):
    """A Struct or Value as plain Python data, for comparisons."""
    return json_format.MessageToDict(message)


def expect_error(code, what, call, *args, **kwargs):
    """Runs call(*args, **kwargs) and checks that it fails with the gRPC status `code`."""
    try:
        response = call(*args, timeout=CALL_TIMEOUT, **kwargs)
    except grpc.RpcError as err:
        check(
            err.code() == code,
            f"{what}: wanted {code.name}, got {err.code().name}: {err.details()}",
        )
        print(f"ok - {what} fails with {code.name} ({err.details()})")
        return
    raise AssertionError(f"{what}: wanted {code.name}, but the call succeeded: {response}")


def channel(address, role):
    """A ready channel of its own (a local subchannel pool keeps parties' connections apart)."""
    ch = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    try:
        grpc.channel_ready_future(ch).result(timeout=CONNECT_TIMEOUT)
    except grpc.FutureTimeoutError:
        raise AssertionError(f"{role}: could not connect to {address} within {CONNECT_TIMEOUT}s")
    return ch


def main(run, doc):
    """Parses the server address, runs run(address), reports; returns the exit code."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("address", help="the server's address, host:port (e.g. 127.0.0.1:50051)")
    args = parser.parse_args()
    try:
        run(args.address)
    except AssertionError as err:
        print(f"FAIL - {err}", file=sys.stderr)
    except grpc.RpcError as err:
        print(f"FAIL - unexpected gRPC error {err.code().name}: {err.details()}", file=sys.stderr)
    else:
        print(f"python-check: {_passed} passed, 0 failed")
        return 0
    print(f"python-check: {_passed} passed, 1 failed", file=sys.stderr)
    return 1

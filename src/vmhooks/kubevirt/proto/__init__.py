"""KubeVirt's hook sidecar protocol: the .proto files (written from
KubeVirt's wire format) and the stubs grpcio-tools generated from them
(`scripts/generate-kubevirt-stubs`; do not edit the *_pb2*.py files,
tests/test_kubevirt_proto.py regenerates them and compares)."""

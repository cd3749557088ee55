"""The KubeVirt hook sidecar: virt-launcher's gRPC calls run the VDSM hooks
tree (`vmhooks kubevirt-sidecar`, docs/kubevirt.md). Needs the `kubevirt`
extra (grpcio, protobuf); nothing outside this package imports it."""

"""End-to-end benchmark: fastinject, grpc.aio and grpclib serving the interop TestService.

Run ``python -m benchmarks.e2e --help`` from the repository root; see ``benchmarks/README.md``.
"""

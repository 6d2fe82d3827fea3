"""Run Triton Inference Server on 127.0.0.1 over a model repository (or over a spec, deployed to a
temporary repository first) until interrupted.

Waits until the server and every model are ready, prints the endpoints and a one-line client
example, then serves; Ctrl-C or SIGTERM stops the server and every process it started. Without
--tritonserver it runs the server bundled in the `serve` extra (pip install 'cnncomp[serve]'),
with cnncomp's Python-based onnxruntime backend; with --tritonserver PATH, a full Triton install
and its own backends. Only 127.0.0.1 is ever bound. See docs/deploy.md.
"""

import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path


def add_arguments(p):
    p.add_argument("repo", metavar="REPO_OR_SPEC",
                   help="a model repository (from cnncomp deploy --triton) or a .cnn spec to deploy first")
    p.add_argument("--http-port", type=int, default=8000, metavar="P", help="HTTP port (default 8000)")
    p.add_argument("--grpc-port", type=int, default=8001, metavar="P", help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=int, default=8002, metavar="P", help="metrics port (default 8002)")
    p.add_argument("--tritonserver", metavar="PATH",
                   help="a tritonserver binary with its own backends (default: the one of the serve extra)")
    p.add_argument("--timeout", type=float, default=300, metavar="S",
                   help="seconds to wait for the server and every model to be ready (default 300)")
    p.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE",
                   help="with a spec: override a top-level let constant (passed to deploy)")
    p.add_argument("--max-batch", type=int, metavar="N", help="with a spec: Triton's max_batch_size (passed to deploy)")


def run(args) -> int:
    from cnncomp.cli.args import UsageError
    from cnncomp.deployment.serve import Ports, TritonServer, client_example

    for flag in ("http_port", "grpc_port", "metrics_port"):
        port = getattr(args, flag)
        if not 0 < port < 65536:
            raise UsageError(f"--{flag.replace('_', '-')} takes a port from 1 to 65535, got {port}")
    source = Path(args.repo)
    is_spec = source.is_file()
    if not is_spec and (args.defines or args.max_batch is not None):
        raise UsageError("-D and --max-batch go with a spec; a repository is served as it is")
    with contextlib.ExitStack() as stack:
        repo = source
        if is_spec:
            repo = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cnncomp-repo-")))
            code = _deploy(source, repo, args)
            if code:
                return code
        server = TritonServer(repo, Ports(args.http_port, args.grpc_port, args.metrics_port), args.tritonserver)
        stack.callback(server.cleanup)
        _stop_on_signals()
        try:
            server.start(timeout=args.timeout)
            ends = server.endpoints()
            print(f"serving {', '.join(server.models)} from {source} (Triton on 127.0.0.1; Ctrl-C stops it)")
            for what, url in ends.items():
                print(f"  {what:8} {url}")
            print("try: " + client_example(ends["gRPC"], server.model_metadata(server.models[0])), flush=True)
            while server.running():
                time.sleep(0.5)
        except KeyboardInterrupt:
            server.stop()
            print("stopped", flush=True)
            return 0
        from cnncomp.errors import CnnError

        log = server.log().strip().splitlines()[-5:]
        raise CnnError("Triton stopped on its own; the end of its log:\n  " + "\n  ".join(log))


def _deploy(spec: Path, repo: Path, args) -> int:
    """`cnncomp deploy SPEC --triton REPO`, its report on standard error."""
    from cnncomp.cli import main

    argv = ["deploy", str(spec), "--triton", str(repo)]
    for d in args.defines:
        argv += ["-D", d]
    if args.max_batch is not None:
        argv += ["--max-batch", str(args.max_batch)]
    with contextlib.redirect_stdout(sys.stderr):
        return main(argv)


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM end serving through the same clean stop (also where a shell started us with
    SIGINT ignored, as it does for background jobs)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)

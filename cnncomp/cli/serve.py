"""Run Triton Inference Server on 127.0.0.1 over a model repository (or over a spec, deployed to a
temporary repository first) until interrupted.

Waits until the server and every model are ready, prints the endpoints and a one-line client
example, then serves; Ctrl-C or SIGTERM stops the server and every process it started. Without
--tritonserver it runs the server bundled in the `serve` extra (pip install 'cnncomp[serve]'),
with cnncomp's Python-based onnxruntime backend; with --tritonserver PATH, a full Triton install
and its own backends. Only 127.0.0.1 is ever bound. See docs/deploy.md.
"""

import signal
import sys
import time

from cnncomp.job import add_options, job_from_args


def add_arguments(p):
    p.add_argument("spec", metavar="REPO_OR_SPEC",
                   help="a model repository (from cnncomp deploy --triton) or a .cnn spec to deploy first")
    add_options(p, "serve")


def run(args) -> int:
    from cnncomp.deployment.serve import client_example
    from cnncomp.errors import CnnError
    from cnncomp.pipeline import serve_job

    job = job_from_args("serve", args)
    _stop_on_signals()
    try:
        with serve_job(job, log=sys.stderr.write) as serving:
            server, ends = serving.server, serving.endpoints
            print(f"serving {', '.join(serving.models)} from {serving.source} (Triton on 127.0.0.1; Ctrl-C stops it)")
            for what, url in ends.items():
                print(f"  {what:8} {url}")
            print("try: " + client_example(ends["gRPC"], server.model_metadata(serving.models[0])), flush=True)
            while server.running():
                time.sleep(0.5)
            log = server.log().strip().splitlines()[-5:]
    except KeyboardInterrupt:
        print("stopped", flush=True)
        return 0
    raise CnnError("Triton stopped on its own; the end of its log:\n  " + "\n  ".join(log))


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM end serving through the same clean stop (also where a shell started us with
    SIGINT ignored, as it does for background jobs)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)

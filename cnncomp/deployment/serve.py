"""A local Triton Inference Server over a model repository, on 127.0.0.1 only.

`TritonServer(repo, ...)` starts `tritonserver` with every endpoint bound to
127.0.0.1, waits until the server and every model in the repository are ready,
and stops it (SIGTERM, then SIGKILL to the whole process group after a grace
period) so that no process and no port outlives it. It is a context manager.

Without an explicit binary it runs the server bundled in the nvidia-pytriton
wheel (the `serve` extra). That build has Triton's Python backend but no C++
onnxruntime backend, so the server gets a backend folder of its own:

    BACKENDS/python/       libtriton_python.so, triton_python_backend_utils.py and the
                           Python stub for this interpreter's version (copied: Triton
                           refuses a backend library that resolves outside its folder)
    BACKENDS/onnxruntime/  model.py, cnncomp's Python-based onnxruntime backend

Triton maps `platform: "onnxruntime_onnx"` to the backend `onnxruntime` and,
finding a model.py there, runs it in a Python stub per model instance. The stub
embeds this interpreter's libpython and sees its site-packages (PYTHONPATH), so
it imports the same numpy and onnxruntime as cnncomp. With `tritonserver=PATH`
(a full Triton install) the server's own backends are used.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cnncomp.errors import CnnError

HOST = "127.0.0.1"  # never any other address: the server is local by design
SERVE_EXTRA = "pip install 'cnncomp[serve]' (or pip install -e '.[serve]' in a checkout)"
BACKEND_SOURCE = Path(__file__).parent / "triton_backend"
ERROR_LINE = re.compile(r"^E\d{4} ")  # Triton's glog error lines: E1201 14:16:04.630006 ...
UNAVAILABLE_ROW = re.compile(r"^\|\s*(\S+)\s*\|\s*(\S+)\s*\|\s*UNAVAILABLE:\s*(.*?)\s*\|\s*$")


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    def named(self) -> dict[str, int]:
        return {"HTTP": self.http, "gRPC": self.grpc, "metrics": self.metrics}


@dataclass(frozen=True)
class BundledServer:
    """Where the nvidia-pytriton wheel keeps the server, its libraries and the Python stubs."""

    binary: Path
    libraries: Path
    python_backend: Path
    stub: Path


def bundled_server() -> BundledServer:
    """The tritonserver of the `serve` extra; a clear error naming the extra when it is absent."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise CnnError(f"no Triton server found: the `serve` extra provides one; {SERVE_EXTRA}, "
                       "or give --tritonserver PATH")
    root = Path(next(iter(spec.submodule_search_locations)))
    dist = root / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    libraries = root.parent / "nvidia_pytriton.libs"
    server = BundledServer(dist / "bin" / "tritonserver", libraries if libraries.is_dir() else dist / "external_libs",
                           dist / "backends" / "python", dist / "python_backend_stubs" / version /
                           "triton_python_backend_stub")
    if not server.binary.is_file():
        raise CnnError(f"nvidia-pytriton is installed but has no server binary at {server.binary}; "
                       f"reinstall it: {SERVE_EXTRA}")
    if not server.stub.is_file():
        raise CnnError(f"nvidia-pytriton has no Python backend stub for Python {version} ({server.stub}); "
                       "use a Python version it supports, or give --tritonserver PATH")
    return server


def repository_models(repo: str | Path) -> list[str]:
    """The model names in a Triton model repository (folders holding a config.pbtxt); an error if none."""
    repo = Path(repo)
    if not repo.is_dir():
        raise CnnError(f"'{repo}' is not a Triton model repository: "
                       + ("no such folder" if not repo.exists() else "not a folder"))
    models = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file() and not p.name.startswith("."))
    if not models:
        raise CnnError(f"'{repo}' is not a Triton model repository: no MODEL/config.pbtxt inside "
                       "(write one with `cnncomp deploy SPEC --triton REPO`)")
    return models


def check_ports_free(ports: Ports) -> None:
    """Every port distinct and free on 127.0.0.1, so that a clash is reported before the server starts."""
    named = ports.named()
    if len(set(named.values())) != len(named):
        raise CnnError(f"the HTTP, gRPC and metrics ports must differ, got {named}")
    for what, port in named.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # as the server binds: a port left in TIME_WAIT by a previous server's clients is free to it
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
            except OSError as e:
                flag = {"HTTP": "--http-port", "gRPC": "--grpc-port", "metrics": "--metrics-port"}[what]
                raise CnnError(f"cannot serve {what} on {HOST}:{port}: {e.strerror or e} "
                               f"(the port is in use; pick another with {flag})") from None


def free_ports(count: int = 3) -> list[int]:
    """Ports the kernel reports free on 127.0.0.1 (for tests and benchmarks)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _python_backend_environment() -> dict[str, str]:
    """PYTHONPATH and LD_LIBRARY_PATH with which the stub embeds this interpreter and finds its packages."""
    paths = [p for p in sys.path if p and Path(p).is_dir()] + site.getsitepackages()
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "LIBDIR": libdir}


def _write_backends(server: BundledServer, folder: Path) -> Path:
    backends = folder / "backends"
    python = backends / "python"
    python.mkdir(parents=True)
    for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(server.python_backend / f, python / f)
    shutil.copy2(server.stub, python / "triton_python_backend_stub")
    shutil.copytree(BACKEND_SOURCE / "onnxruntime", backends / "onnxruntime",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return backends


def load_errors(log: str) -> list[str]:
    """Why models or the server failed, in Triton's own words, from its log."""
    models, server, other = [], [], []
    for line in log.splitlines():
        row = UNAVAILABLE_ROW.match(line)
        if row:
            models.append(f"model '{row[1]}' version {row[2]} failed to load: {row[3]}")
        elif line.startswith("error: "):
            server.append(line)
        elif ERROR_LINE.match(line):
            other.append(line.split("] ", 1)[-1].strip('"'))
    # a Python traceback inside a reason arrives as escaped newlines: keep the message, drop the frames
    errors = list(dict.fromkeys(e.split("\\n")[0] for e in (models or other) + server))
    if any("KIND_GPU but no GPUs are available" in e for e in errors):
        errors.append("hint: this server has no GPU; redeploy without --kind gpu (Triton then picks the CPU)")
    return errors


class TritonServer:
    """tritonserver on 127.0.0.1 over a model repository: start() waits until every model is ready; stop() ends it."""

    def __init__(self, repo: str | Path, ports: Ports = Ports(), tritonserver: str | Path | None = None,
                 grace_seconds: float = 15.0):
        self.repo = Path(repo).resolve()
        self.ports = ports
        self.tritonserver = Path(tritonserver) if tritonserver else None
        self.grace_seconds = grace_seconds
        self.models: list[str] = []
        self.process: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._log = None

    @property
    def log_path(self) -> Path | None:
        return self._workdir / "tritonserver.log" if self._workdir else None

    def log(self) -> str:
        """The server's log so far."""
        path = self.log_path
        return path.read_text(errors="replace") if path and path.exists() else ""

    def command(self, backends: Path | None) -> list[str]:
        binary = str(self.tritonserver) if self.tritonserver else str(bundled_server().binary)
        # explicit model control: Triton loads the models repository_models() found, and nothing else in
        # the folder (a stray temporary of a killed deploy would otherwise fail the whole repository)
        loads = [f"--load-model={name}" for name in self.models or repository_models(self.repo)]
        cmd = [binary, f"--model-repository={self.repo}", "--model-control-mode=explicit", *loads,
               "--exit-on-error=true", "--strict-readiness=true",
               f"--exit-timeout-secs={int(self.grace_seconds)}",
               f"--http-address={HOST}", f"--http-port={self.ports.http}",
               f"--grpc-address={HOST}", f"--grpc-port={self.ports.grpc}",
               f"--metrics-address={HOST}", f"--metrics-port={self.ports.metrics}"]
        if backends is not None:
            cmd += [f"--backend-directory={backends}", f"--cache-directory={backends.parent}",
                    f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}"]
        return cmd

    @property
    def _shm_prefix(self) -> str:
        return f"cnncomp_serve_{os.getpid()}_{id(self) & 0xFFFFFF:x}_"

    def start(self, timeout: float = 180.0) -> None:
        """Start the server and wait until it and every model are ready; a CnnError says why not."""
        self.models = repository_models(self.repo)
        if self.tritonserver is not None and not (self.tritonserver.is_file() and os.access(self.tritonserver, os.X_OK)):
            raise CnnError(f"--tritonserver {self.tritonserver}: no such executable")
        check_ports_free(self.ports)
        self._workdir = Path(tempfile.mkdtemp(prefix="cnncomp-serve-"))
        env = os.environ.copy()
        backends = None
        if self.tritonserver is None:
            server = bundled_server()
            backends = _write_backends(server, self._workdir)
            extra = _python_backend_environment()
            env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(server.libraries), extra["LIBDIR"],
                                                                 env.get("LD_LIBRARY_PATH", "")) if p)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (extra["PYTHONPATH"], env.get("PYTHONPATH", "")) if p)
        self._log = open(self.log_path, "wb")
        try:
            # umask 077: the Python backend's shared-memory regions (request and response tensors in
            # /dev/shm) and anything else the server creates are its user's alone, mode 0600
            self.process = subprocess.Popen(self.command(backends), stdout=self._log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                            umask=0o077)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                errors = load_errors(self.log()) or self.log().strip().splitlines()[-5:]
                raise CnnError(f"Triton exited with status {code} before it was ready:\n  " + "\n  ".join(errors))
            if self._ready():
                return
            if time.monotonic() > deadline:
                waiting = [name for name in self.models if not self._http_ok_quietly(f"/v2/models/{name}/ready")]
                tail = self.log().strip().splitlines()[-5:]
                raise CnnError(f"Triton was not ready after {timeout:.0f} s (models not ready: "
                               f"{', '.join(waiting) or 'none'}); the end of its log:\n  " + "\n  ".join(tail))
            time.sleep(0.2)

    def _ready(self) -> bool:
        return self._http_ok_quietly("/v2/health/ready") and all(
            self._http_ok_quietly(f"/v2/models/{name}/ready") for name in self.models)

    def _http_ok_quietly(self, path: str) -> bool:
        try:
            return self._http_ok(path)
        except OSError:
            return False

    def _http_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.ports.http}{path}", timeout=2) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        """Stop the server and everything it started; return its exit status (None if it never ran)."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(self.grace_seconds + 5)
                except subprocess.TimeoutExpired:
                    pass
            try:  # the Python stubs share the server's process group; none may outlive it
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            code = self.process.wait()
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        for leftover in Path("/dev/shm").glob(self._shm_prefix + "*"):
            leftover.unlink(missing_ok=True)
        return code

    def cleanup(self) -> None:
        """Stop the server and remove its working folder (backends, log)."""
        self.stop()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def endpoints(self) -> dict[str, str]:
        return {"HTTP": f"http://{HOST}:{self.ports.http}", "gRPC": f"{HOST}:{self.ports.grpc}",
                "metrics": f"http://{HOST}:{self.ports.metrics}/metrics"}

    def model_metadata(self, name: str) -> dict:
        """The server's metadata of one model: its inputs and outputs with names, datatypes and shapes."""
        import json

        with urllib.request.urlopen(f"http://{HOST}:{self.ports.http}/v2/models/{name}", timeout=5) as r:
            return json.loads(r.read())


def client_example(grpc_endpoint: str, metadata: dict) -> str:
    """A one-line shell command that sends zeros to a served model over gRPC and prints the output shapes
    (a dynamic batch dim as 1, a dynamic size as 64, which most image models with strides up to 32 take).
    Names come from the repository, so each is a Python literal (repr) inside a program that is one
    shell word (double quotes when nothing in it is special there, else shlex.quote): no name can end a
    string and run code when the line is pasted."""
    inputs = metadata["inputs"]
    numpy_types = {"FP32": "float32", "FP16": "float16", "FP64": "float64", "INT64": "int64", "INT32": "int32",
                   "INT8": "int8", "UINT8": "uint8", "BOOL": "bool_"}
    make = []
    for k, i in enumerate(inputs):
        shape = [int(d) if int(d) >= 0 else 1 if j == 0 else 64 for j, d in enumerate(i["shape"])]
        dtype = numpy_types.get(i["datatype"], "float32")
        make.append(f"i{k} = g.InferInput({str(i['name'])!r}, {shape}, {str(i['datatype'])!r}); "
                    f"i{k}.set_data_from_numpy(np.zeros({tuple(shape)}, np.{dtype}))")
    listed = ", ".join(f"i{k}" for k in range(len(inputs)))
    outputs = ", ".join(f"r.as_numpy({str(o['name'])!r}).shape" for o in metadata["outputs"])
    program = (f"import numpy as np, tritonclient.grpc as g; c = g.InferenceServerClient({str(grpc_endpoint)!r}); "
               f"{'; '.join(make)}; r = c.infer({str(metadata['name'])!r}, [{listed}]); print({outputs})")
    if not set(program) & set('"$`\\!'):  # nothing the shell expands inside double quotes: the readable form
        return f'python -c "{program}"'
    return f"python -c {shlex.quote(program)}"


def serve_extra_missing() -> str | None:
    """Why `cnncomp serve` cannot run here (the `serve` extra absent or incomplete), or None."""
    try:
        bundled_server()
        import tritonclient.grpc
        import tritonclient.http  # noqa: F401
    except CnnError as e:
        return e.message
    except (ImportError, RuntimeError) as e:  # tritonclient.grpc raises RuntimeError without grpcio
        return f"tritonclient is incomplete ({e}); {SERVE_EXTRA}"
    return None


def processes_under(pid: int) -> list[int]:
    """The live descendants of a process (from /proc), to check that none outlives a server."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found

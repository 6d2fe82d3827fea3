"""What int8 buys in time, layer by layer and for the whole model, under ONNX Runtime's CPU provider here.

Which layers pay in int8 depends on the runtime: ONNX Runtime's int8 1x1 convs run about three times
as fast as its float32 ones, its int8 depthwise convs hardly faster or slower (docs/precision.md has
the figures). The float32 fallback search (int8.py) therefore asks what each layer group costs in
both precisions, and the finished model is timed against float32 before it is written.

- `layer_speed`: ONNX Runtime's profiler (`SessionOptions.enable_profiling`) on the float32 model
  and on the full int8 model, batch as the model's, one thread: per-node median times of the
  optimized session graph, mapped back to the layer groups of int8.py (`owner_of`: ORT renames
  the nodes it fuses or re-lays out, `features.0.0_token_1` for a QLinearConv, `conv1_nchwc`;
  a standalone QuantizeLinear/DequantizeLinear belongs to the group whose tensor it rounds).
  Cached per model (`cache_key`) under `cache_dir()`.
- `quantized_islands`: the islands rule, after the fallback search has chosen.
- `time_models` / `int8_is_faster`: the not-faster rule's measurement, interleaved medians.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from cnncomp.onnx_graph import consumers, producers

CACHE_VERSION = 1  # bump when what a cache entry holds changes meaning
PROFILE_RUNS, PROFILE_WARMUP = 5, 2  # per-node medians over 5 runs: ~1 s for ResNet-50 on one thread
# The not-faster rule: int8 counts as faster when its median is at least 5% below float32's. Interleaved
# medians of the same model twice differ by up to ~3% on the loaded 2-core machine (docs/precision.md), so a
# smaller gain is not told from noise, and int8 that is not measurably faster only costs accuracy.
NOT_FASTER_MARGIN = 0.05
TIMING_ROUNDS, TIMING_SECONDS = 5, 1.0  # at least 5 interleaved rounds, more while under 1 s
# ops whose int8 kernels are where int8 saves time: an island without one buys none (issue 19)
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_ORT_AFFIX = re.compile(r"_(nchwc|token_\d+)$|^fused ")  # what ORT's transformers add to the nodes they rewrite


# ---- the cache -------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """$CNNCOMP_CACHE_DIR, else $XDG_CACHE_HOME/cnncomp, else ~/.cache/cnncomp."""
    if os.environ.get("CNNCOMP_CACHE_DIR"):
        return Path(os.environ["CNNCOMP_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "cnncomp"
    return Path.home() / ".cache" / "cnncomp"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(*models: onnx.ModelProto, settings: dict) -> str:
    """A hash of the models' bytes, the settings (int8 options, threads, input shapes), ONNX Runtime's version
    and the CPU model: a timing measured under another of these is not reused."""
    import onnxruntime as ort

    digest = hashlib.sha256()
    for model in models:
        digest.update(hashlib.sha256(model.SerializeToString()).digest())
    facts = {"version": CACHE_VERSION, "settings": settings, "runtime": f"onnxruntime {ort.__version__}",
             "cpu": cpu_model()}
    digest.update(json.dumps(facts, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def read_cache(kind: str, key: str) -> dict | None:
    """The cached entry, or None when there is none or it cannot be read (a corrupt entry is ignored)."""
    try:
        value = json.loads((cache_dir() / kind / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_cache(kind: str, key: str, value: dict) -> None:
    """Write an entry atomically (a temporary file renamed into place); a cache that cannot be written is
    skipped: it only saves time."""
    folder = cache_dir() / kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(value, f)
        os.replace(tmp, folder / f"{key}.json")
    except OSError:
        pass


# ---- per-layer times -------------------------------------------------------------------------------------


@dataclass
class LayerTime:
    """A layer group's time per run in float32 and in int8, in milliseconds."""

    float_ms: float
    int8_ms: float

    @property
    def added_ms(self) -> float:
        """What keeping the group in float32 adds to a run (negative: it saves time; slower in int8)."""
        return self.float_ms - self.int8_ms


@dataclass
class SpeedProfile:
    """Per-group times, the whole runs' profiled totals, and what no group owns (layout changes, ...)."""

    layers: dict[str, LayerTime] = field(default_factory=dict)
    float_total_ms: float = 0.0
    int8_total_ms: float = 0.0
    unattributed_ms: tuple[float, float] = (0.0, 0.0)  # (float32, int8)
    cached: bool = False

    def to_json(self) -> dict:
        return {"layers": {k: [v.float_ms, v.int8_ms] for k, v in self.layers.items()},
                "totals": [self.float_total_ms, self.int8_total_ms], "unattributed": list(self.unattributed_ms)}

    @classmethod
    def from_json(cls, value: dict) -> "SpeedProfile":
        layers = {k: LayerTime(float(f), float(i)) for k, (f, i) in value["layers"].items()}
        (f, i), (uf, ui) = value["totals"], value["unattributed"]
        return cls(layers, float(f), float(i), (float(uf), float(ui)), cached=True)


def session_options(threads: int = 1):
    """The session settings every timing here uses (both precisions alike): `threads` intra-op threads,
    ORT's default graph optimizations, no spinning (idle threads would steal the other session's core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def profile_node_times(model: onnx.ModelProto, feeds: dict, threads: int = 1, runs: int = PROFILE_RUNS,
                       warmup: int = PROFILE_WARMUP) -> dict[str, float]:
    """{node name of ORT's optimized graph: median milliseconds per run} from ONNX Runtime's profiler, over
    `runs` runs after `warmup` runs."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="cnncomp-profile-") as tmp:
        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for _ in range(warmup + runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    times: dict[str, list[float]] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            times.setdefault(name[:-len("_kernel_time")], []).append(event["dur"] / 1000.0)
    return {name: float(np.median(durations[-runs:])) for name, durations in times.items()}


def cached_node_times(model: onnx.ModelProto, feeds: dict, threads: int = 1) -> dict[str, float]:
    """profile_node_times, cached per model, threads and input shapes (the same model gives the same choice)."""
    shapes = {name: list(np.shape(value)) for name, value in feeds.items()}
    key = cache_key(model, settings={"threads": threads, "shapes": shapes})
    entry = read_cache("int8-node-times", key)
    if entry is not None and all(isinstance(v, float) for v in entry.values()):
        return entry
    times = profile_node_times(model, feeds, threads)
    write_cache("int8-node-times", key, times)
    return times


def owner_of(name: str, model: onnx.ModelProto, group_of: dict[str, str], index: tuple | None = None) -> str | None:
    """The layer group (of the float32 model's `layer_groups`) a profiled node of `model` belongs to, or None.

    ORT keeps a node's name when it fuses others into it, and appends `_token_N` (QDQ fusions: QLinearConv)
    or `_nchwc` (its blocked layout) when it rewrites it; both are stripped. A standalone QuantizeLinear or
    DequantizeLinear of the QDQ model belongs to the group that produces the tensor it rounds (a weight's, or a
    graph input's: the group that reads it). `index`: `graph_index(model)`, computed once by a caller of many."""
    nodes, producer, readers = index or graph_index(model)
    name = base_name(name, group_of, nodes)
    if name in group_of:
        return group_of[name]
    node = nodes.get(name)
    if node is None or node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
        return None
    tensor = node.input[0]
    while tensor in producer and producer[tensor].op_type in ("QuantizeLinear", "DequantizeLinear"):
        tensor = producer[tensor].input[0]  # back through the pair to the float tensor it rounds
    if tensor in producer and producer[tensor].name in group_of:
        return group_of[producer[tensor].name]
    frontier = list(node.output)
    while frontier:
        for user in readers.get(frontier.pop(), []):
            if user.name in group_of:
                return group_of[user.name]
            if user.op_type in ("QuantizeLinear", "DequantizeLinear"):
                frontier += list(user.output)
    return None


def base_name(name: str, group_of: dict, nodes: dict) -> str:
    """A profiled node's name without what ORT's transformers added (`_token_N`, `_nchwc`, `fused `)."""
    while name not in group_of and name not in nodes and _ORT_AFFIX.search(name):
        name = _ORT_AFFIX.sub("", name, count=1)
    return name


def graph_index(model: onnx.ModelProto) -> tuple[dict, dict, dict]:
    """(nodes by name, producer by tensor, consumers by tensor) of a model."""
    return {n.name: n for n in model.graph.node}, producers(model), consumers(model)


def group_times(model: onnx.ModelProto, groups: dict[str, list[str]], node_times: dict[str, float]
                ) -> tuple[dict[str, float], float]:
    """({group: milliseconds}, unattributed milliseconds): the profiled nodes summed by the group they belong to.

    A fused kernel can carry the name of its last node (ORT's Conv + Sigmoid is named after the Sigmoid):
    a profiled node other than a conv/gemm/matmul whose input's producer, a node of some group, ran in no
    kernel of its own was fused with it, and its time goes to that producer's group (the conv's: it does the
    work)."""
    group_of = {member: head for head, members in groups.items() for member in members}
    totals = dict.fromkeys(groups, 0.0)
    rest = 0.0
    index = graph_index(model)
    nodes, producer, _ = index
    ran = {base_name(name, group_of, nodes) for name in node_times}
    for name, ms in node_times.items():
        node = nodes.get(base_name(name, group_of, nodes))
        while node is not None and node.op_type not in COMPUTE_OPS and node.input and node.input[0] in producer:
            before = producer[node.input[0]]
            if before.name not in group_of or before.name in ran:
                break
            node, name = before, before.name  # fused into this kernel
        owner = owner_of(name, model, group_of, index)
        if owner is None:
            rest += ms
        else:
            totals[owner] += ms
    return totals, rest


def layer_speed(float_model: onnx.ModelProto, int8_model: onnx.ModelProto, groups: dict[str, list[str]],
                feeds: dict, settings: dict, threads: int = 1, use_cache: bool = True) -> SpeedProfile:
    """Every layer group's time in float32 and in int8 (the full int8 model), profiled on `feeds` (one batch),
    cached per float32 model, int8 `settings`, threads, input shapes, runtime and CPU."""
    shapes = {name: list(np.shape(value)) for name, value in feeds.items()}
    key = cache_key(float_model, settings={**settings, "threads": threads, "shapes": shapes, "groups": groups})
    if use_cache:
        entry = read_cache("int8-layer-times", key)
        if entry is not None:
            try:
                return SpeedProfile.from_json(entry)
            except (AttributeError, KeyError, TypeError, ValueError):
                pass  # an entry of another shape: measure again
    float_nodes = profile_node_times(float_model, feeds, threads)
    int8_nodes = profile_node_times(int8_model, feeds, threads)
    float_groups, float_rest = group_times(float_model, groups, float_nodes)
    int8_groups, int8_rest = group_times(int8_model, groups, int8_nodes)
    profile = SpeedProfile({g: LayerTime(float_groups[g], int8_groups[g]) for g in groups},
                           sum(float_nodes.values()), sum(int8_nodes.values()), (float_rest, int8_rest))
    write_cache("int8-layer-times", key, profile.to_json())
    return profile


# ---- the fallback order ---------------------------------------------------------------------------------


def fallback_order(ranked: list, times: dict[str, LayerTime] | None) -> list:
    """The order in which the budget search puts layers back in float32: the error each removes (its relative
    L2 `error_alone`, int8.rank_layers) per millisecond it adds when kept in float32. A layer that is no
    faster in int8 adds no time and goes first (the most sensitive of them first); a layer without a time
    goes after those with one, by its error. A layer with no float32 kernel of its own (ORT fuses a residual
    add into the conv before it) would run alone in float32, between a DequantizeLinear and a QuantizeLinear:
    it is taken to add its int8 time, not to save it. Each entry's float_ms/int8_ms are filled from `times`."""
    if not times:
        return sorted(ranked, key=lambda l: -l.error_alone)

    def key(entry):
        time = times.get(entry.layer)
        if time is None:
            return (2, -entry.error_alone)
        added = time.added_ms if time.float_ms > 0 else time.int8_ms
        if added <= 0:
            return (0, -entry.error_alone)
        return (1, -entry.error_alone / added)

    for entry in ranked:
        if entry.layer in times:
            entry.float_ms, entry.int8_ms = times[entry.layer].float_ms, times[entry.layer].int8_ms
    return sorted(ranked, key=key)


# ---- the islands rule ------------------------------------------------------------------------------------


def group_neighbours(model: onnx.ModelProto, groups: dict[str, list[str]]) -> dict[str, set[str]]:
    """{group: the groups it feeds or is fed by, directly}: the float32 model's edges between groups."""
    group_of = {member: head for head, members in groups.items() for member in members}
    readers = consumers(model)
    neighbours: dict[str, set[str]] = {g: set() for g in groups}
    for node in model.graph.node:
        if node.name not in group_of:
            continue
        for tensor in node.output:
            for user in readers.get(tensor, []):
                a, b = group_of[node.name], group_of.get(user.name)
                if b is not None and a != b:
                    neighbours[a].add(b)
                    neighbours[b].add(a)
    return neighbours


def quantized_islands(model: onnx.ModelProto, groups: dict[str, list[str]], float_groups: set[str],
                      times: dict[str, LayerTime] | None = None, boundary_ms=None) -> list[list[str]]:
    """The islands rule: the connected sets of int8 groups that must go back to float32, each in graph order.

    Applies when some groups are float32 (the fallback's choice, or no int8 kernel). An island is a maximal
    set of int8 groups connected to each other (through the float32 model's edges, ignoring nodes in no
    group). It goes back to float32 when it holds no conv/gemm/matmul (a lone softmax, add or pool between
    float32 layers: its int8 kernel saves nothing worth the QuantizeLinear/DequantizeLinear around it, and
    costs accuracy), or when its measured saving (`times`: float32 ms - int8 ms over its groups) is below the
    cost of its boundary, `boundary_ms(island) -> ms` (the Q/DQ nodes that round its inputs and outputs)."""
    if not float_groups:
        return []
    heads = {n.name: n.op_type for n in model.graph.node}
    neighbours = group_neighbours(model, groups)
    seen: set[str] = set()
    back = []
    for start in groups:
        if start in float_groups or start in seen:
            continue
        island, frontier = {start}, [start]
        while frontier:
            for other in neighbours[frontier.pop()]:
                if other not in float_groups and other not in island:
                    island.add(other)
                    frontier.append(other)
        seen |= island
        members = [g for g in groups if g in island]
        if not any(heads.get(g) in COMPUTE_OPS for g in members):
            back.append(members)
        elif times is not None and boundary_ms is not None and \
                sum(times[g].added_ms for g in members if g in times) < boundary_ms(members):
            back.append(members)
    return back


def boundary_times(model: onnx.ModelProto, groups: dict[str, list[str]], node_times: dict[str, float]):
    """boundary_ms(island) for `quantized_islands`: the profiled standalone Q/DQ nodes of a mixed model
    (`node_times` of `model`) on tensors that cross the island's edge (one side in it, the other not)."""
    group_of = {member: head for head, members in groups.items() for member in members}
    producer, readers = producers(model), consumers(model)
    nodes = {n.name: n for n in model.graph.node}

    def sides(node) -> set[str | None]:
        """The groups on both sides of the float tensor a Q/DQ node rounds (None: a graph input or output)."""
        tensor = node.input[0]
        while tensor in producer and producer[tensor].op_type in ("QuantizeLinear", "DequantizeLinear"):
            tensor = producer[tensor].input[0]
        found = {group_of.get(producer[tensor].name) if tensor in producer else None}
        frontier = [tensor]
        while frontier:
            for user in readers.get(frontier.pop(), []):
                if user.op_type in ("QuantizeLinear", "DequantizeLinear"):
                    frontier += list(user.output)
                else:
                    found.add(group_of.get(user.name))
        return found

    qdq = {}
    for name, ms in node_times.items():
        node = nodes.get(name)
        if node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear") and \
                not any(node.input[0] == t.name for t in model.graph.initializer):
            qdq[name] = (sides(node), ms)

    def boundary_ms(island: list[str]) -> float:
        inside = set(island)
        return sum(ms for around, ms in qdq.values() if around & inside and around - inside)

    return boundary_ms


# ---- the whole model: the not-faster rule ----------------------------------------------------------------


def time_models(float_model: onnx.ModelProto, int8_model: onnx.ModelProto, feeds: dict, threads: int = 1,
                use_cache: bool = True) -> tuple[float, float, bool]:
    """(float32 ms, int8 ms, cached): median run times of both models on `feeds`, interleaved (each round runs
    both, in alternating order, so background load drifts over both alike), same session settings; at least
    TIMING_ROUNDS rounds, more while under TIMING_SECONDS. Cached per pair of models, threads and shapes."""
    import onnxruntime as ort

    shapes = {name: list(np.shape(value)) for name, value in feeds.items()}
    key = cache_key(float_model, int8_model, settings={"threads": threads, "shapes": shapes})
    entry = read_cache("int8-model-times", key) if use_cache else None
    if entry is not None and isinstance(entry.get("float_ms"), float) and isinstance(entry.get("int8_ms"), float):
        return entry["float_ms"], entry["int8_ms"], True
    sessions = [ort.InferenceSession(m.SerializeToString(), session_options(threads),
                                     providers=["CPUExecutionProvider"]) for m in (float_model, int8_model)]
    for session in sessions:
        session.run(None, feeds)
        session.run(None, feeds)
    times: list[list[float]] = [[], []]
    start = time.perf_counter()
    rounds = 0
    while rounds < TIMING_ROUNDS or (time.perf_counter() - start < TIMING_SECONDS and rounds < 50):
        for i in ((0, 1) if rounds % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            sessions[i].run(None, feeds)
            times[i].append(time.perf_counter() - t0)
        rounds += 1
    float_ms, int8_ms = (float(np.median(t)) * 1000.0 for t in times)
    write_cache("int8-model-times", key, {"float_ms": float_ms, "int8_ms": int8_ms})
    return float_ms, int8_ms, False


def int8_is_faster(float_ms: float, int8_ms: float, margin: float = NOT_FASTER_MARGIN) -> bool:
    """Whether int8 is measurably faster: its median at least `margin` below float32's."""
    return int8_ms < float_ms * (1.0 - margin)

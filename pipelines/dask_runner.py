"""Our DaskRunner: a Beam batch pipeline on a dask.distributed cluster, without the losses of Beam 2.77's.

Beam's own DaskRunner translates each transform to a `dask.bag` step, but
mixes a ParDo's tagged outputs, drops what `finish_bundle` emits, computes
only the last leaf of the graph, ignores Reshuffle and recomputes a side
input inside every task that reads it. This one keeps its translation,
fixes those five (1-5), and keeps Dask's graph optimization from losing
records (6):

1. each PCollection has its own bag: a ParDo's bag holds `(tag, value)`
   pairs and each output keeps only its tag;
2. a partition is one complete bundle (setup, start, process, finish,
   teardown), and what `finish_bundle` emits is kept;
3. every leaf is computed as one collection, so that Dask optimizes one graph
   and a step that several leaves share runs once (Dask optimizes each
   collection of a compute on its own, each with its own copy of the steps);
4. Reshuffle spreads its input over `--dask_npartitions` partitions (default
   `DEFAULT_PARTITIONS`);
5. a side input is computed once, as a task the consuming tasks depend on,
   from partitions of that same graph;
6. each PCollection's partitions are lists made by a function of ours. Dask
   fuses a chain of steps into one task and, inside it, drops its own `list`
   and `reify` calls; a chain ending in a partition of one of Dask's own steps
   (the `concat` of a Flatten, the `repartition` of a Reshuffle, a `filter` or
   `map`) then yields a one-shot iterator, and of two steps reading it (a side
   input and a main input, say) the second got nothing, silently.

Batch only, global windows only (what an export uses). Each task runs on
some worker, maybe twice (Dask reruns the tasks of a lost worker): the
export's writers are fenced and its finalize is retry-safe for that reason.

Every Beam internal (private module or attribute) this relies on is listed in
`BEAM_INTERNALS`. If one is missing from the installed Beam,
`--runner=DaskRunner` is refused before any job exists, naming what is missing
(`pipelines.options.prepare_runner`).
"""

from __future__ import annotations

import functools
import importlib
import logging
import socket
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import apache_beam as beam
import dask
import dask.bag as db
import dask.distributed as ddist
from apache_beam import pvalue
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor, PTransformOverride
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms.window import GlobalWindow

from transforms.errors import EngineLost

try:  # Beam internals, each in `BEAM_INTERNALS`: a Beam that lacks one is refused before any run
    from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, Receiver, _OutputHandler
    from apache_beam.runners.dask.dask_runner import DaskOptions, DaskRunnerResult
    from apache_beam.runners.dask.dask_runner import DaskRunner as BeamDaskRunner
    from apache_beam.runners.dask.overrides import _Create, _Flatten, _GroupByKeyOnly, _Reshuffle, dask_overrides
    from apache_beam.transforms.sideinputs import SideInputMap
    from apache_beam.utils.windowed_value import WindowedValue
except ImportError:  # the module still imports, so that `missing_internals()` can name what is gone
    DoFnContext = DoFnInvoker = DoFnSignature = _OutputHandler = DaskOptions = SideInputMap = WindowedValue = None
    _Create = _Flatten = _GroupByKeyOnly = _Reshuffle = dask_overrides = None
    Receiver = DaskRunnerResult = BeamDaskRunner = object

_LOG = logging.getLogger(__name__)
DEFAULT_PARTITIONS = 32  # what a Reshuffle spreads its input over, without --dask_npartitions
_GLOBAL = (GlobalWindow(),)


def _attribute(spec: str) -> object:
    """The object `module:attribute.path` names; ImportError or AttributeError when Beam lacks it."""
    module, _, path = spec.partition(":")
    value: object = importlib.import_module(module)
    for name in path.split("."):
        value = getattr(value, name)
    return value


def _beam_group_by_key_override() -> object:
    overrides = _attribute("apache_beam.runners.dask.overrides:dask_overrides")()
    if "GroupByKeyOverride" not in {type(o).__name__ for o in overrides}:
        raise AttributeError("dask_overrides() no longer has a GroupByKeyOverride")
    return overrides


_ATTRIBUTES = (
    "apache_beam.runners.common:DoFnContext",
    "apache_beam.runners.common:DoFnInvoker.create_invoker",
    "apache_beam.runners.common:DoFnSignature",
    "apache_beam.runners.common:Receiver",
    "apache_beam.runners.common:_OutputHandler",
    "apache_beam.runners.dask.dask_runner:DaskOptions._extract_bag_kwargs",
    "apache_beam.runners.dask.dask_runner:DaskRunner",
    "apache_beam.runners.dask.dask_runner:DaskRunnerResult",
    "apache_beam.runners.dask.overrides:_Create",
    "apache_beam.runners.dask.overrides:_Flatten",
    "apache_beam.runners.dask.overrides:_GroupByKeyOnly",
    "apache_beam.runners.dask.overrides:_Reshuffle",
    "apache_beam.transforms.sideinputs:SideInputMap",
    "apache_beam.utils.windowed_value:WindowedValue",
    "apache_beam.pvalue:AsSideInput._view_options",
)
# Every Beam internal the Dask runner relies on, with how it is looked up.
BEAM_INTERNALS: dict[str, Callable[[], object]] = {
    **{spec.replace(":", "."): functools.partial(_attribute, spec) for spec in _ATTRIBUTES},
    "apache_beam.runners.dask.overrides.dask_overrides() GroupByKeyOverride": _beam_group_by_key_override,
    "apache_beam.transforms.ptransform.PTransformWithSideInputs.raw_side_inputs": lambda: beam.Map(len).raw_side_inputs,
}


def missing_internals() -> list[str]:
    """The names in `BEAM_INTERNALS` that the installed Beam lacks."""
    missing = []
    for name, look_up in BEAM_INTERNALS.items():
        try:
            look_up()
        except (AttributeError, ImportError, TypeError):
            missing.append(name)
    return missing


def _windowed(value: Any) -> WindowedValue:
    return WindowedValue(value, 0, _GLOBAL)


class _Collect(Receiver):
    """Keeps every output of one tag as `(tag, value)`."""

    def __init__(self, tag: Optional[str], out: list):
        self._tag, self._out = tag, out

    def receive(self, windowed_value: WindowedValue) -> None:
        self._out.append((self._tag, windowed_value.value))


class _Receivers(dict):
    def __init__(self, out: list):
        super().__init__()
        self._out = out

    def __missing__(self, tag):
        receiver = self[tag] = _Collect(tag, self._out)
        return receiver


def _run_bundle(items, do_fn, label: str, args, kwargs, window_fn, side_specs, *side_values):
    """One partition as one bundle of `do_fn`; returns its outputs as `(tag, value)`, finish_bundle's too."""
    out: list = []
    receivers = _Receivers(out)
    handler = _OutputHandler(window_fn=window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
                             per_element_output_counter=None, output_batch_converter=None,
                             process_yields_batches=False, process_batch_yields_elements=False)
    side_inputs = [SideInputMap(view_class, options, [_windowed(v) for v in values])
                   for (view_class, options), values in zip(side_specs, side_values)]
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(do_fn), handler, context=DoFnContext(label, state=None), side_inputs=side_inputs,
        input_args=args, input_kwargs=kwargs, user_state_context=None,
        bundle_finalizer_param=beam.DoFn.BundleFinalizerParam())
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(_windowed(item))
    invoker.invoke_finish_bundle()
    invoker.invoke_teardown()
    return out


def _concat(*partitions) -> list:
    return [value for partition in partitions for value in partition]


def _drain(partition) -> list:
    for _ in partition:
        pass
    return []


class _Translate(PipelineVisitor):
    """Builds one dask bag per PCollection, from the pipeline's primitive transforms."""

    def __init__(self, npartitions: Optional[int]):
        self.bags: dict[pvalue.PCollection, Any] = {}
        self.consumed: set[pvalue.PCollection] = set()
        self._npartitions = npartitions

    def visit_transform(self, node: AppliedPTransform) -> None:
        inputs = [value for value in node.inputs if isinstance(value, pvalue.PCollection)]
        self.consumed.update(inputs)
        self.consumed.update(si.pvalue for si in node.side_inputs)
        transform = node.transform
        if isinstance(transform, beam.ParDo):
            tagged = self._par_do(node, self.bags[inputs[0]])
            for tag, output in node.outputs.items():
                self.bags[output] = tagged.map_partitions(_of_tag, None if tag in (None, "None") else tag)
            return
        if isinstance(transform, _Create):
            bag = db.from_sequence(list(transform.values), npartitions=self._create_partitions(transform.values))
        elif isinstance(transform, _GroupByKeyOnly):
            bag = self.bags[inputs[0]].groupby(_key).map_partitions(_values_of_groups)
        elif isinstance(transform, _Flatten):
            bag = _listed(db.concat([self.bags[value] for value in inputs])) if inputs else db.from_sequence([])
        elif isinstance(transform, _Reshuffle):
            bag = _listed(self.bags[inputs[0]].repartition(npartitions=self._npartitions or DEFAULT_PARTITIONS))
        elif isinstance(transform, beam.Impulse):
            bag = db.from_sequence([b""], npartitions=1)
        elif inputs:  # e.g. an identity Read
            bag = self.bags[inputs[0]]
        else:
            raise NotImplementedError(f"the Dask runner cannot run {type(transform).__name__} ({node.full_label})")
        for output in node.outputs.values():
            self.bags[output] = bag

    def _create_partitions(self, values) -> int:
        return max(1, min(len(values), self._npartitions or DEFAULT_PARTITIONS))

    def _par_do(self, node: AppliedPTransform, input_bag):
        transform = node.transform
        args, kwargs = transform.raw_side_inputs
        main_input = next(iter(node.main_inputs.values()))
        window_fn = main_input.windowing.windowfn if hasattr(main_input, "windowing") else None
        side_specs = [(type(si), si._view_options()) for si in node.side_inputs]
        # Each side input is computed once, as one task the consuming partitions depend on: named by what it
        # reads (every ParDo that reads it shares it), from partitions of the one graph (not a copy of theirs).
        side_values = [dask.delayed(_concat, pure=True)(*self.bags[si.pvalue].to_delayed(optimize_graph=False))
                       for si in node.side_inputs]
        return input_bag.map_partitions(_run_bundle, transform.fn, node.full_label, list(args), kwargs, window_fn,
                                        side_specs, *side_values)

    def leaves(self) -> list:
        """The bags nothing consumes: computing them all runs the whole graph."""
        seen, leaves = set(), []
        for pcoll, bag in self.bags.items():
            if pcoll not in self.consumed and id(bag) not in seen:
                seen.add(id(bag))
                leaves.append(bag)
        return leaves


def _of_tag(partition, tag) -> list:
    return [value for item_tag, value in partition if item_tag == tag]


def _listed(bag):
    """`bag`, each partition of it a list made by a function of ours (point 6 of the module's docstring)."""
    return bag.map_partitions(_as_list)


def _as_list(partition) -> list:
    return partition if isinstance(partition, list) else list(partition)


def _key(item):
    return item[0]


def _values_of_groups(groups) -> list:
    return [(key, [value for _, value in items]) for key, items in groups]


class _GroupByKeyOverride(PTransformOverride):
    """GroupByKey as one group step: global windows only, so no window reification."""

    def matches(self, applied: AppliedPTransform) -> bool:
        return applied.transform.__class__ == beam.GroupByKey

    def get_replacement_transform_for_applied_ptransform(self, applied: AppliedPTransform):
        return _GroupByKeyOnly()


def _overrides() -> list[PTransformOverride]:
    beams = [o for o in dask_overrides() if type(o).__name__ != "GroupByKeyOverride"]
    return [_GroupByKeyOverride(), *beams]


class _Result(DaskRunnerResult):
    """Beam's Dask result, whose client is closed once the job has ended, and which fails (`EngineLost`)
    when the scheduler is lost: Beam's own counts a future cancelled by the lost connection as done."""

    _cancelled = False

    def wait_until_finish(self, duration=None):
        try:
            timeout = None if duration is None else duration / 1000  # Beam's duration is in milliseconds
            for future, outcome in ddist.as_completed(self.futures, timeout=timeout, with_results=True):
                if future.cancelled() and not self._cancelled:
                    raise EngineLost(_lost(self.client.scheduler.address, getattr(outcome, "reason", "")))
            self._state = PipelineState.DONE
        except BaseException:
            self._state = PipelineState.FAILED
            raise
        finally:
            if self._state in (PipelineState.DONE, PipelineState.FAILED):
                self.client.close(timeout=_CLOSE_TIMEOUT_S)
        return self._state

    def cancel(self):
        self._cancelled = True
        try:
            return super().cancel()
        finally:
            self.client.close(timeout=_CLOSE_TIMEOUT_S)


_CLOSE_TIMEOUT_S = 5
_PROBE_TIMEOUT_S = 2.0
_CONNECTION_LOST = "scheduler-connection-lost"  # distributed's reason for the futures of a lost scheduler


def _lost(address: str, reason: str) -> str:
    """One line naming why the job's futures were cancelled: the scheduler stopped answering (and what
    a new connection to it meets now), or the scheduler cancelled them itself."""
    if reason and reason != _CONNECTION_LOST:
        return f"the Dask scheduler at {address} cancelled the job's tasks ({reason})"
    return f"the Dask scheduler at {address} stopped answering ({_probe(address)})"


def _probe(address: str) -> str:
    """What connecting to `address` (`tcp://host:port`) meets now, in a few words."""
    parts = urlsplit(address)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        return "connection lost"
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return "connection lost; it accepts connections again"
    except socket.timeout:
        return f"no answer within {_PROBE_TIMEOUT_S:g} s"
    except OSError as exc:
        return (exc.strerror or type(exc).__name__).lower()


class DaskRunner(BeamDaskRunner):
    """Runs a batch pipeline on the dask.distributed scheduler `--dask_client_address` names."""

    def run_pipeline(self, pipeline, options):
        dask_options = options.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)
        npartitions = DaskOptions._extract_bag_kwargs(dask_options).get("npartitions")
        # A lost scheduler is reported in one line (`EngineLost`): the client's own logs (its reconnect
        # tracebacks) follow Beam's level, so they show only where Beam's do (`-v`).
        for name in ("distributed", "distributed.client"):
            logging.getLogger(name).setLevel(logging.getLogger("apache_beam").getEffectiveLevel())
        try:
            client = ddist.Client(**dask_options)
        except OSError as exc:  # e.g. "Timed out trying to connect to tcp://...": the engine is out of reach
            address = dask_options.get("address", "")
            raise EngineLost(f"the Dask scheduler at {address} cannot be reached ({_probe(address)})") from exc
        pipeline.replace_all(_overrides())
        translate = _Translate(npartitions)
        pipeline.visit(translate)
        leaves = [leaf.map_partitions(_drain) for leaf in translate.leaves()]
        _LOG.info("Dask: %d leaves over %s", len(leaves), client.scheduler.address)
        # One collection (point 3 of the module's docstring): one graph, each shared step in it once.
        return _Result(client, [client.compute(db.concat(leaves))])


__all__ = ["DaskRunner", "DaskOptions"]

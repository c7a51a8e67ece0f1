"""Cheaper pipeline construction on Beam: two of Beam's repeated look-ups, made once.

Building a small export's graph cost about 0.4 s of CPU, most of it in two
places (cProfile, benchmarks/README.md "Fixed cost (issue 28)"):

- `PipelineOptions.view_as` builds a new argparse parser with every registered
  option and parses the flags again on each call, and Beam asks for a view on
  every transform it applies (about 380 calls for one export).
  `ExportPipelineOptions` makes each view once: a view holds nothing but the
  flags and the options dict it shares with every other view, so a kept view
  reads and writes exactly what a new one would.
- `userstate.get_dofn_specs` takes `inspect.signature` of every method of a
  DoFn, and Beam asks it again for the same DoFn at each check (about 330 calls
  for 43 DoFns). `cache_dofn_specs` keeps its answer per DoFn object: the specs
  come from the DoFn's methods' parameter defaults, which do not change.

Both are process-wide only in what they cache, and neither changes an answer.
If the installed Beam lacks `get_dofn_specs`, construction simply stays as slow
as before.
"""

from __future__ import annotations

import functools
import weakref
from typing import Callable, TypeVar

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import userstate

_View = TypeVar("_View", bound=PipelineOptions)


class ExportPipelineOptions(PipelineOptions):
    """`PipelineOptions` whose views are made once per options class."""

    def view_as(self, cls: type[_View]) -> _View:
        views = self.__dict__.setdefault("_views", {})  # __dict__: PipelineOptions.__setattr__ refuses new names
        view = views.get(cls)
        if view is None:
            view = views[cls] = super().view_as(cls)
        return view


def cache_dofn_specs() -> None:
    """Makes Beam's `userstate.get_dofn_specs` answer once per DoFn object; idempotent."""
    original = getattr(userstate, "get_dofn_specs", None)
    if original is None or getattr(original, "_cached", False):
        return
    userstate.get_dofn_specs = _cached_per_object(original)


def _cached_per_object(look_up: Callable) -> Callable:
    answers: dict[int, tuple[weakref.ref, tuple]] = {}  # by id(): one DoFn object, not DoFns that compare equal

    @functools.wraps(look_up)
    def cached(dofn):
        key = id(dofn)
        kept = answers.get(key)
        if kept is not None and kept[0]() is dofn:
            state, timers = kept[1]
        else:
            state, timers = specs = look_up(dofn)
            try:
                answers[key] = (weakref.ref(dofn, lambda _, key=key: answers.pop(key, None)), specs)
            except TypeError:  # a DoFn that cannot be weakly referenced is asked each time
                pass
        return set(state), set(timers)  # copies: a caller may change what it is given

    cached._cached = True
    return cached

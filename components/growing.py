"""Showing a list that grows at its end, at a cost per new item of about that item alone.

ReactPy 1.1 sends the whole model of a component each time it renders, with the models of all
the components inside it, and renders every child of a component that renders. A component that
showed all of a stream's chunks would send them all again for each new one: at 2,000 chunks,
about 750 KB for a one-chunk update. So the items are shown by a tree of small components, and
a new item renders only the component of that item:

* :func:`GrowingItems` is the root: a chain of nodes, each holding ``FANOUT`` times as many items
  as the one before (16, 256, 4,096, …), so the tree grows without any of it rendering again;
* a node holds ``FANOUT`` nodes of the level below, and a node of the first level ``FANOUT``
  items;
* every node and item renders once, empty, while the list does not reach it yet, and once more
  when it does. An item may render again after that while the list says it may still change
  (the Markdown section still being written); a node never does.

Nodes and empty items render as fragments, so the page holds only the items' own elements, in
order, inside whatever element holds the root.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from reactpy import component, html, use_effect, use_ref, use_state
from reactpy.core.types import VdomDict

T = TypeVar("T")

FANOUT = 16


class ItemLog(Generic[T]):
    """The items a :func:`GrowingItems` shows: a list that grows at its end, whose items from
    ``final`` on may still change, and the components that wait to hear of their items.

    Whoever changes the list calls :meth:`changed` with the first index that changed; the
    components showing that item or any after it render again, and no other."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self.final = 0  # items below this index never change again
        self.changes = 0  # how many times :meth:`changed` was called
        self._waiting: dict[int, set[Callable[[], None]]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def wait(self, index: int, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` whenever the item at ``index`` is added or changes; returns how to
        stop."""
        self._waiting.setdefault(index, set()).add(wake)

        def stop() -> None:
            waiting = self._waiting.get(index)
            if waiting is not None:
                waiting.discard(wake)
                if not waiting:
                    del self._waiting[index]

        return stop

    def changed(self, first: int) -> None:
        """The items from ``first`` on were added or changed."""
        self.changes += 1
        end = len(self.items)
        if end - first <= len(self._waiting):
            indexes = [index for index in range(first, end) if index in self._waiting]
        else:
            indexes = [index for index in self._waiting if first <= index < end]
        for index in sorted(indexes):
            for wake in list(self._waiting.get(index, ())):
                wake()


# Renders the item at an index of the log, once the log holds it.
RenderItem = Callable[[ItemLog[T], int], VdomDict]


@component
def GrowingItems(log: ItemLog[T], render_item: RenderItem[T]) -> VdomDict:
    """Every item of ``log``, now and as it grows, each rendered by ``render_item``."""
    return html._(_Chain(log, render_item, 1, 0))


def _span(level: int) -> int:
    """How many items a node of ``level`` holds (an item is level 0)."""
    return int(FANOUT**level)


def _use_reach(log: ItemLog[T], start: int, *, keep_waiting: bool) -> bool:
    """Whether the log reaches ``start`` yet; the component renders again once it does, and,
    with ``keep_waiting``, whenever the item at ``start`` changes while it may."""
    _, set_version = use_state(0)
    reached = len(log) > start
    rendered_changes = log.changes
    waiting = not reached or (keep_waiting and start >= log.final)
    woken = use_ref(False)
    woken.current = False

    def wake() -> None:
        if not woken.current:  # one render answers every wake before it
            woken.current = True
            set_version(lambda version: version + 1)

    @use_effect(dependencies=[log, start, waiting])
    def listen() -> Callable[[], None] | None:
        if not waiting:
            return None
        stop = log.wait(start, wake)
        if log.changes != rendered_changes:
            wake()  # the log changed between this render and now: render what it holds now
        return stop

    return reached


@component
def _Chain(log: ItemLog[T], render_item: RenderItem[T], level: int, start: int) -> VdomDict:
    """A node of ``level`` from ``start``, then the chain of larger nodes after it."""
    if not _use_reach(log, start, keep_waiting=False):
        return html._()
    following = start + _span(level)
    return html._(
        _Node(log, render_item, level, start, key="node"),
        _Chain(log, render_item, level + 1, following, key="chain"),
    )


@component
def _Node(log: ItemLog[T], render_item: RenderItem[T], level: int, start: int) -> VdomDict:
    if not _use_reach(log, start, keep_waiting=False):
        return html._()
    step = _span(level - 1)
    if level == 1:
        children = [
            _Item(log, render_item, start + index, key=str(index)) for index in range(FANOUT)
        ]
    else:
        children = [
            _Node(log, render_item, level - 1, start + index * step, key=str(index))
            for index in range(FANOUT)
        ]
    return html._(*children)


@component
def _Item(log: ItemLog[T], render_item: RenderItem[T], index: int) -> VdomDict:
    if not _use_reach(log, index, keep_waiting=True):
        return html._()
    return render_item(log, index)

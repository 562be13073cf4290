"""Pure, vectorised plane geometry in image pixels: sides of a line, segment extent, polygons.

Image coordinates: ``x`` grows to the right, ``y`` grows *down*. Every function takes ``(n, 2)`` point
arrays and answers for all points at once, with no Python loop over points.

Side convention (the one :class:`edge.config.LineConfig` documents)::

            end (320, 0)
               ^
               |
     left  -   |   +  right          a point moving left → right crosses "in"
               |
            start (320, 480)

Stand on ``start`` and look at ``end`` in the image as displayed: points on your right-hand side have
a positive signed distance. In image coordinates that is the plain 2-D cross product
``(end - start) × (p - start)``, because the y axis pointing down mirrors the usual maths picture.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["line_coordinates", "point_in_polygon", "segment_distance", "side_of_line", "within_segment"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
PointLike = npt.ArrayLike  # one point: (x, y)


def _points(points: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"points: expected shape (n, 2), got {arr.shape}")
    return arr


def _one(point: PointLike) -> FloatArray:
    return np.asarray(point, dtype=np.float64).reshape(1, 2)


def line_coordinates(
    points: npt.ArrayLike, starts: npt.ArrayLike, ends: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Each point's coordinates relative to each of several lines, in one vectorised step.

    Args:
        points: ``(n, 2)`` points.
        starts: ``(k, 2)`` line start points.
        ends: ``(k, 2)`` line end points (each different from its start).

    Returns:
        ``(across, along, lengths)``: ``(n, k)`` signed distances (positive on the right-hand side, as
        :func:`side_of_line`), ``(n, k)`` positions of each point's foot along each line in pixels from
        its start, and the ``(k,)`` line lengths.

    Raises:
        ValueError: for a degenerate line or badly shaped input.

    Example:
        >>> across, along, lengths = line_coordinates([[330, 100]], [[320, 480]], [[320, 0]])
        >>> across.tolist(), along.tolist(), lengths.tolist()
        ([[10.0]], [[380.0]], [480.0])
    """
    p = _points(points)
    s = np.asarray(starts, dtype=np.float64).reshape(-1, 2)
    d = np.asarray(ends, dtype=np.float64).reshape(-1, 2) - s
    if d.shape != s.shape:
        raise ValueError(f"starts and ends: expected the same number of points, got {len(s)} and {len(d)}")
    lengths = np.hypot(d[:, 0], d[:, 1])
    if np.any(lengths == 0):
        bad = s[np.argmax(lengths == 0)].tolist()
        raise ValueError(f"degenerate line: start and end are both {bad}")
    rx = p[:, None, 0] - s[None, :, 0]  # (n, k)
    ry = p[:, None, 1] - s[None, :, 1]
    across = (d[:, 0] * ry - d[:, 1] * rx) / lengths
    along = (d[:, 0] * rx + d[:, 1] * ry) / lengths
    return across, along, lengths


def side_of_line(points: npt.ArrayLike, start: PointLike, end: PointLike) -> FloatArray:
    """Signed distance in pixels of each point from the infinite line through ``start`` and ``end``.

    Args:
        points: ``(n, 2)`` points ``x, y`` in image pixels.
        start: first point of the line.
        end: second point of the line (must differ from ``start``).

    Returns:
        ``(n,)`` distances: positive on the right-hand side of someone standing on ``start`` looking at
        ``end`` in the image as displayed, negative on the left, zero on the line.

    Raises:
        ValueError: for a degenerate line or points not shaped ``(n, 2)``.

    Example:
        >>> side_of_line([[300, 240], [340, 240]], (320, 480), (320, 0)).tolist()
        [-20.0, 20.0]
    """
    return line_coordinates(points, _one(start), _one(end))[0][:, 0]


def within_segment(points: npt.ArrayLike, start: PointLike, end: PointLike, margin: float = 0.0) -> BoolArray:
    """Whether each point projects onto the segment, extended by ``margin`` pixels at both ends.

    A crossing of the infinite line beside the segment (past ``start`` or ``end``) must not count; this
    is the test for it.

    Args:
        points: ``(n, 2)`` points.
        start: first point of the segment.
        end: second point of the segment.
        margin: pixels the segment is lengthened by at each end (negative shortens it).

    Returns:
        ``(n,)`` booleans.

    Example:
        >>> within_segment([[0, 5], [0, 12], [0, 11]], (5, 0), (5, 10), margin=1).tolist()
        [True, False, True]
    """
    _, along, lengths = line_coordinates(points, _one(start), _one(end))
    return (along[:, 0] >= -margin) & (along[:, 0] <= lengths[0] + margin)


def segment_distance(points: npt.ArrayLike, start: PointLike, end: PointLike) -> FloatArray:
    """Euclidean distance in pixels from each point to the closest point of the segment.

    Example:
        >>> segment_distance([[0, 0], [5, 13]], (5, 0), (5, 10)).tolist()
        [5.0, 3.0]
    """
    across, along, lengths = line_coordinates(points, _one(start), _one(end))
    beyond = np.maximum(-along[:, 0], 0.0) + np.maximum(along[:, 0] - lengths[0], 0.0)
    return np.hypot(across[:, 0], beyond)


def point_in_polygon(points: npt.ArrayLike, polygon: npt.ArrayLike) -> BoolArray:
    """Whether each point lies inside a simple polygon (even-odd ray casting; edges count as inside).

    Args:
        points: ``(n, 2)`` points.
        polygon: ``(m, 2)`` vertices, ``m >= 3``, in order; the closing edge is implied.

    Returns:
        ``(n,)`` booleans.

    Raises:
        ValueError: for fewer than three vertices.

    Example:
        >>> point_in_polygon([[5, 5], [15, 5], [10, 0]], [[0, 0], [10, 0], [10, 10], [0, 10]]).tolist()
        [True, False, True]
    """
    p = _points(points)
    poly = np.asarray(polygon, dtype=np.float64)
    if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3:
        raise ValueError(f"polygon: expected at least 3 vertices as (m, 2), got shape {poly.shape}")
    a = poly[None, :, :]  # (1, m, 2) edge starts
    b = np.roll(poly, -1, axis=0)[None, :, :]  # edge ends
    px, py = p[:, None, 0], p[:, None, 1]  # (n, 1)
    ax, ay, bx, by = a[..., 0], a[..., 1], b[..., 0], b[..., 1]
    straddles = (ay > py) != (by > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = ax + (py - ay) * (bx - ax) / (by - ay)
    inside = np.logical_xor.reduce(straddles & (px < x_cross), axis=1)
    # Points exactly on an edge are ambiguous for ray casting; treat them as inside.
    cross: FloatArray = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
    in_box = (np.minimum(ax, bx) <= px) & (px <= np.maximum(ax, bx))
    in_box &= (np.minimum(ay, by) <= py) & (py <= np.maximum(ay, by))
    on_edge = np.any((np.abs(cross) <= 1e-9) & in_box, axis=1)
    return inside | on_edge

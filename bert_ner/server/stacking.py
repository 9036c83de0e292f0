"""Requests' tensors stacked into one batch and cut back, as TF Serving's BatchingSession does.

A batch of requests is merged as batching_session.cc MergeInputTensors merges it: every input
padded to the batch's largest shape with that request's first element (pad_variable_length_inputs),
rows added up to allowed_batch_sizes, outputs split by rows only, so a request gets back the merged
batch's width. For this project's exports (the inference graph labels every position beyond a
row's real length 0) the merged batch runs in length groups instead of one run, each group padded
to its own longest request and its outputs padded with 0 to the merged width: the same bytes as
one merged run (tests/test_tfs_batching.py) for a fraction of the padded positions.
"""

import math

import numpy as np

from bert_ner.server.errors import invalid

PADDING_BUDGET = 1.3  # padded / real positions allowed when merged requests share a run
# Positions (rows x width) of one session run of an export; a longer group runs in row chunks.
# A session run cannot be stopped once started (its RunOptions timeout only ends the wait), so
# this bounds the work left running for a caller that went away, and a run's memory (attention
# grows with rows x width^2). Shipped model on 2 loaded cores: 2 x 512 or 8 x 128 take about
# 0.4-0.5 s; 64 x 128 took 5.9 s in one run and 2.9 s in eight such chunks.
MAX_RUN_POSITIONS = 1024


def padded_batch_size(rows, allowed_batch_sizes):
  """Rows a batch runs with: the smallest allowed size that holds them, else as many
  (batching_util.cc RoundToLowestAllowedBatchSize)."""
  return next((size for size in allowed_batch_sizes if size >= rows), rows)


def rows(request):
  """A request's rows (axis 0 of its inputs)."""
  return len(next(iter(request.values())))


def widest(arrays):
  """The largest size of every axis but the first over arrays of one rank."""
  return [max(sizes) for sizes in zip(*(a.shape[1:] for a in arrays))]


def merge(requests, options):
  """BatchingSession::MergeInputTensors: the batch's inputs, each request's rows padded to the
  largest shape (pad_variable_length_inputs), then rows up to the lowest allowed batch size
  (copies of the last request's first row). Also each request's (start, end, end with padding
  rows) row span."""
  counts = [rows(r) for r in requests]
  padding_rows = padded_batch_size(sum(counts), options.allowed_batch_sizes) - sum(counts)
  ends = np.cumsum(counts)
  spans = [(end - n, end, end) for n, end in zip(counts, ends)]
  spans[-1] = (spans[-1][0], spans[-1][1], spans[-1][2] + padding_rows)
  if len(requests) == 1 and not padding_rows:
    return requests[0], spans
  merged = {}
  for alias in requests[0]:
    arrays = [r[alias] for r in requests]
    if options.pad_variable_length_inputs:
      sizes = widest(arrays)
      arrays = [pad_tensor(a, sizes) for a in arrays]
    merged[alias] = np.concatenate(arrays + [arrays[-1][:1]] * padding_rows)
  return merged, spans


def pad_tensor(array, sizes):
  """batching_util.cc PadTensor: pads every axis but the first up to sizes with the array's
  FIRST element."""
  shape = (array.shape[0], *sizes)
  if math.prod(shape) == array.size:
    return array.reshape(shape)
  if not array.size:
    raise invalid("Got empty tensor in batch of non-empty tensors.")
  widths = [(0, 0)] + [(0, n - s) for n, s in zip(sizes, array.shape[1:])]
  return np.pad(array, widths, constant_values=array.flat[0])


def sequence_length(request):
  """A request's padded length: axis 1 of its inputs (0 for inputs without one)."""
  return max((a.shape[1] for a in request.values() if a.ndim > 1), default=0)


def length_groups(requests, max_padding=PADDING_BUDGET):
  """Request indices grouped by length so that padding a group to its longest request costs at
  most `max_padding` times its real positions. On a CPU the model's cost follows padded
  positions, and 32 random CoNLL sentences padded together hold 2.8x their real ones."""
  groups = []
  group_rows = real = 0  # rows and real positions of groups[-1]
  for i in sorted(range(len(requests)), key=lambda i: sequence_length(requests[i])):
    count = rows(requests[i])
    length = sequence_length(requests[i])  # the longest so far: requests come sorted
    if groups and (group_rows + count) * length <= max_padding * (real + count * length):
      groups[-1].append(i)
      group_rows, real = group_rows + count, real + count * length
    else:
      groups.append([i])
      group_rows, real = count, count * length
  return groups


def length_group_runs(requests, merged, spans):
  """Yields the runs a merged batch is computed in: (merged row indices, feeds), one per length
  group, or per row chunk of a group over MAX_RUN_POSITIONS.

  A group's rows are the merged inputs' rows cut to the group's longest request, so still padded
  with each request's first element.
  """
  for group in length_groups(requests):
    index = np.concatenate([np.arange(spans[i][0], spans[i][2]) for i in group])
    width = max(sequence_length(requests[i]) for i in group)
    for chunk in np.array_split(index, math.ceil(len(index) * width / MAX_RUN_POSITIONS) or 1):
      feeds = {
        a: v[(chunk, *(slice(0, n) for n in widest(requests[i][a] for i in group)))]
        for a, v in merged.items()
      }
      yield chunk, feeds


def scatter_rows(runs, row_count):
  """The merged batch's outputs from its runs' (merged row indices, outputs), each run's outputs
  padded with 0 to the widest run's: exactly one merged run's, as the graph outputs 0 beyond
  every row's length."""
  outputs = {}
  for alias in runs[0][1]:
    values = [outputs_of_run[alias] for _, outputs_of_run in runs]
    out = np.zeros((row_count, *widest(values)), values[0].dtype)
    for (index, _), value in zip(runs, values):
      out[(index, *(slice(0, n) for n in value.shape[1:]))] = value
    outputs[alias] = out
  return outputs


def join_pieces(results):
  """A split task's outputs, its pieces' joined along axis 0.

  TF Serving joins them with tensor::Concat, which assumes the first piece's width for all of
  them (a wider later piece aborts the server, a narrower one is misread); here each output is
  padded with 0 to its widest piece, the width a client accepts.
  """
  if len(results) == 1:
    return results[0]
  joined = {}
  for alias in results[0]:
    parts = [r[alias] for r in results]
    shape = widest(parts)
    joined[alias] = np.concatenate(
      [np.pad(p, [(0, 0)] + [(0, n - s) for n, s in zip(shape, p.shape[1:])]) for p in parts]
    )
  return joined

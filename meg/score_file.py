"""`meg score`: anomaly scores for every row of a CSV or Parquet file, streamed in chunks
(pandas `read_csv(chunksize=)`, pyarrow `iter_batches`), so a file larger than memory
works. Rows are scored either by a server (`ServerScorer`, through meg.client) or
in-process from a bundle directory (`BundleScorer`: the server's engine, service.engine,
imported lazily; no HTTP and no training code), with the same numbers either way.

Which columns are read: for a bundle with preprocessing (tabular records) its input
features by name (other columns are ignored); otherwise the model-space columns named by
the bundle's `feature_names` when the file has them all, else every column when there are
exactly data_dim of them.

Output (CSV, or Parquet when the output name ends in .parquet), one row per input row:
`row` (0-based index in the file), any `--keep` columns, `score`, `p_value`,
`percentile`, `is_anomaly`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from meg import bundle as B
from meg.client import MegClientError

OUTPUT_COLUMNS = ("score", "p_value", "percentile", "is_anomaly")


class ScoreError(ValueError):
    """The file cannot be scored as asked (columns, chunk, server answer); the message
    says which row range and why."""


@dataclass(frozen=True)
class Scores:
    """Scores of one chunk, all (N,)."""

    score: np.ndarray
    p_value: np.ndarray
    percentile: np.ndarray
    is_anomaly: np.ndarray


@dataclass(frozen=True)
class Columns:
    """How a frame becomes a request: records over `features`, or model-space rows
    from `columns` (None: every column, in file order)."""

    records: bool
    features: list[str]
    data_dim: int


class Scorer(Protocol):
    columns: Columns

    def score(self, inputs: np.ndarray | None, records: list[dict[str, Any]] | None) -> Scores:
        ...


def _model_columns(frame_columns: list[str], cols: Columns) -> list[str]:
    if cols.features and all(f in frame_columns for f in cols.features):
        return cols.features
    if len(frame_columns) == cols.data_dim:
        return frame_columns
    shown = ", ".join(cols.features[:8]) + (", ..." if len(cols.features) > 8 else "")
    raise ScoreError(f"the file's {len(frame_columns)} columns are neither the model's "
                     f"feature columns ({shown}) nor exactly {cols.data_dim} columns")


def request_of(frame: Any, cols: Columns) -> tuple[np.ndarray | None,
                                                   list[dict[str, Any]] | None]:
    """(inputs, records) of a pandas chunk: exactly one is not None."""
    names = [str(c) for c in frame.columns]
    if cols.records:
        missing = [f for f in cols.features if f not in names]
        if missing:
            raise ScoreError(f"the file has no column {missing[0]!r} (the model's input "
                             f"features: {', '.join(cols.features)})")
        sub = frame[cols.features]
        records = [{k: _plain(v) for k, v in zip(cols.features, row, strict=True)}
                   for row in sub.itertuples(index=False, name=None)]
        return None, records
    use = _model_columns(names, cols)
    x = frame[use].to_numpy(dtype=np.float64, na_value=np.nan)
    if not np.isfinite(x).all():
        r, c = (int(v) for v in np.argwhere(~np.isfinite(x))[0])
        raise ScoreError(f"column {use[c]!r} of chunk row {r} is empty or not a finite number")
    return x, None


def _plain(v: Any) -> Any:
    """numpy scalars as Python values; NaN (an empty cell) as None."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and np.isnan(v):
        return None
    return v


# --------------------------------------------------------------------------- scorers


class BundleScorer:
    """In-process: the server's own engine (service.engine, imported here only) over one
    bundle directory, so the numbers are the server's by construction: the bundle's
    default score, its calibration, p-values and flags (p_value <= target_fpr, default
    the bundle's, or score >= an explicit threshold). No HTTP, no training code."""

    def __init__(self, bundle_dir: Path, threshold: float | None = None,
                 target_fpr: float | None = None, score: str | None = None):
        import asyncio

        if threshold is not None and target_fpr is not None:
            raise ScoreError("give at most one of --threshold or --target-fpr")
        self.threshold, self.target_fpr, self.score_name = threshold, target_fpr, score
        self.loop = asyncio.new_event_loop()
        self.engine: Any = None
        try:
            self.model = self.loop.run_until_complete(self._start(Path(bundle_dir)))
        except BaseException:
            self.close()
            raise
        pre = self.model.manifest.preprocessing
        self.columns = Columns(records=pre is not None,
                               features=[f.name for f in pre.features] if pre else
                               list(self.model.manifest.data.feature_names),
                               data_dim=self.model.data_dim)

    async def _start(self, bundle_dir: Path) -> Any:
        from service.engine import Engine
        from service.metrics import Metrics
        from service.settings import Settings

        if not (bundle_dir / B.MANIFEST).is_file():
            raise ScoreError(f"{bundle_dir}: not a bundle directory (no {B.MANIFEST})")
        # One caller, whole chunks: no batching delay, no row cap, no request deadline
        # worth the name (a chunk may take long on a slow machine).
        settings = Settings(models_dir=bundle_dir, log_level="WARNING", inference_workers=1,
                            max_delay_ms=0, max_rows=10**9, request_timeout_s=24 * 3600.0)
        self.engine = Engine(settings, Metrics())
        await self.engine.load()
        if not self.engine.registry.models:
            reasons = "; ".join(self.engine.registry.failed.values()) or "nothing loaded"
            raise ScoreError(f"{bundle_dir}: the bundle did not load: {reasons}")
        return self.engine.resolve(None)

    def score(self, inputs: np.ndarray | None, records: list[dict[str, Any]] | None) -> Scores:
        from service.engine.errors import EngineError

        async def run() -> Any:
            rows = self.engine.rows(self.model, inputs, records)
            return await self.engine.anomaly(self.model, rows, threshold=self.threshold,
                                             target_fpr=self.target_fpr, score=self.score_name)

        try:
            a = self.loop.run_until_complete(run())
        except EngineError as e:
            raise ScoreError(f"{e.field}: {e.message}" if e.field else e.message) from None
        return Scores(np.asarray(a.scores, dtype=np.float64), a.p_values, a.percentiles,
                      a.flags)

    def __enter__(self) -> BundleScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the engine's threads."""
        if self.engine is not None:
            self.loop.run_until_complete(self.engine.close())
            self.engine = None
        self.loop.close()


class ServerScorer:
    """Through a running server's POST /anomaly (meg.client), in requests of at most
    `request_rows` rows whatever the chunk size (the server caps rows per request at
    MEG_MAX_ROWS, 10000 by default)."""

    def __init__(self, client: Any, model: str, threshold: float | None = None,
                 target_fpr: float | None = None, request_rows: int = 1000,
                 score: str | None = None):
        self.client = client
        self.score_name = score
        self.request_rows = request_rows
        self.model = model
        self.threshold = threshold
        self.target_fpr = target_fpr
        detail = client.model(model)
        feats = detail.get("input_features")
        self.columns = Columns(records=bool(feats),
                               features=[f["name"] for f in feats] if feats else
                               list(detail.get("feature_names") or []),
                               data_dim=int(detail["data_dim"]))

    def score(self, inputs: np.ndarray | None, records: list[dict[str, Any]] | None) -> Scores:
        rows: Any = inputs if inputs is not None else records
        parts = []
        for start in range(0, len(rows), self.request_rows):
            part = rows[start:start + self.request_rows]
            try:
                a = self.client.anomaly(
                    inputs=part if inputs is not None else None,
                    records=part if records is not None else None, model=self.model,
                    threshold=self.threshold, target_fpr=self.target_fpr,
                    score=self.score_name)
            except MegClientError as e:
                raise ScoreError(f"chunk rows from {start}: {e}") from e
            parts.append(a)
        return Scores(*(np.concatenate([getattr(a, k) for a in parts])
                        for k in ("scores", "p_values", "percentiles", "is_anomaly")))


# --------------------------------------------------------------------------- files


def read_chunks(path: Path, chunk_size: int, names: list[str] | None = None) -> Iterator[Any]:
    """pandas DataFrames of at most `chunk_size` rows; never the whole file at once.
    `names`: the CSV has no header row; its first columns are these, in this order, and
    any further ones (a label, say) are named column<i> (i counting from 0)."""
    import pandas as pd

    if names is not None:
        with pd.read_csv(path, chunksize=chunk_size, header=None) as reader:
            for chunk in reader:
                if chunk.shape[1] < len(names):
                    raise ScoreError(f"{path.name} has {chunk.shape[1]} columns; the model "
                                     f"reads {len(names)} ({', '.join(names[:4])}, ...)")
                chunk.columns = names + [f"column{i}" for i in range(len(names), chunk.shape[1])]
                yield chunk
        return

    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        with pq.ParquetFile(path) as f:
            for batch in f.iter_batches(batch_size=chunk_size):
                yield batch.to_pandas()
        return
    with pd.read_csv(path, chunksize=chunk_size) as reader:
        yield from reader


def count_rows(path: Path) -> int | None:
    """Rows of a Parquet file from its footer (cheap); None for CSV (unknown ahead)."""
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    return None


class _Writer:
    """CSV (to a file or stdout) or Parquet, one chunk at a time."""

    def __init__(self, out: Path | None, stream: IO[str]):
        self.out = out
        self.stream = stream
        self.parquet = out is not None and out.suffix.lower() in (".parquet", ".pq")
        self.pq_writer: Any = None
        self.fh: IO[str] | None = None
        self.first = True

    def write(self, frame: Any) -> None:
        if self.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.pq_writer is None:
                self.pq_writer = pq.ParquetWriter(str(self.out), table.schema)
            self.pq_writer.write_table(table)
            return
        if self.fh is None:
            self.fh = open(self.out, "w", newline="") if self.out else self.stream  # noqa: SIM115
        frame.to_csv(self.fh, index=False, header=self.first, lineterminator="\n")
        self.first = False

    def close(self) -> None:
        if self.pq_writer is not None:
            self.pq_writer.close()
        if self.fh is not None and self.out is not None:
            self.fh.close()


@dataclass(frozen=True)
class ScoreSummary:
    rows: int
    flagged: int


def score_file(path: Path, scorer: Scorer, out: Path | None = None, chunk_size: int = 1000,
               keep: list[str] | None = None, progress: bool = True,
               stream: IO[str] | None = None, header: bool = True) -> ScoreSummary:
    """Score every row of `path` (CSV or Parquet) chunk by chunk; write the scores to `out`
    (stdout when None). `header=False`: a CSV without a header row whose columns are the
    model's input features in order (e.g. the raw KDDCUP99 file). Raises ScoreError
    naming the row range at fault."""
    import pandas as pd
    from tqdm import tqdm

    if chunk_size < 1:
        raise ScoreError("--chunk-size must be at least 1")
    writer = _Writer(out, stream or sys.stdout)
    bar = tqdm(total=count_rows(path), unit="rows", disable=not progress, file=sys.stderr,
               desc=f"scoring {path.name}")
    start = flagged = 0
    try:
        if not header and path.suffix.lower() in (".parquet", ".pq"):
            raise ScoreError("--no-header is for CSV files (Parquet columns have names)")
        names = None if header else list(scorer.columns.features)
        for chunk in read_chunks(path, chunk_size, names):
            n = len(chunk)
            try:
                inputs, records = request_of(chunk, scorer.columns)
                s = scorer.score(inputs, records)
            except (ValueError, MegClientError) as e:  # ScoreError, RecordError, APIError
                raise ScoreError(f"rows {start}-{start + n - 1}: {e}") from e
            cols: dict[str, Any] = {"row": np.arange(start, start + n)}
            for k in keep or []:
                if k not in chunk.columns:
                    raise ScoreError(f"--keep {k!r}: no such column")
                cols[k] = chunk[k].to_numpy()
            cols.update({"score": s.score, "p_value": s.p_value, "percentile": s.percentile,
                         "is_anomaly": s.is_anomaly})
            writer.write(pd.DataFrame(cols))
            start += n
            flagged += int(np.count_nonzero(s.is_anomaly))
            bar.update(n)
    finally:
        bar.close()
        writer.close()
    return ScoreSummary(start, flagged)

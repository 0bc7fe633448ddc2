"""`data.until` holds the newest source rows out of training; `driftline simulate`
replays exactly those, cleaned as training rows are, with the source's key and time."""

from __future__ import annotations

from datetime import date

import pandas as pd

from pipeline.stages.ingest import hold_out


def test_rows_after_the_day_are_held_out_whatever_the_time_format() -> None:
    frame = pd.DataFrame(
        {
            "day": ["2012-06-29", "2012-06-30", "2012-06-30T23:00:00", "2012-07-01", None],
            "value": [1, 2, 3, 4, 5],
        }
    )
    kept, held = hold_out(frame, "day", date(2012, 6, 30))
    assert kept["value"].tolist() == [1, 2, 3, 5]  # an unparseable time is not "later"
    assert held["value"].tolist() == [4]
    unchanged, none = hold_out(frame, "day", None)
    assert unchanged.equals(frame) and none.empty

"""Raw readers on hand-written files: format details and every bad-input case."""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl
import pytest

from recsys_pipeline.datasets import RawDataError, read_events
from recsys_pipeline.preprocessing import ProtocolConfig, run_protocol

REES46_HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def rees46_line(t: str, kind: str, product: int, user: int) -> str:
    return f"2019-10-01 {t} UTC,{kind},{product},1,,,1.0,{user},s"


def test_diginetica_anchors_every_event_on_the_session_first_date(tmp_path):
    write(
        tmp_path / "train-item-views.csv",
        "sessionId;userId;itemId;timeframe;eventdate\n"
        "1;NA;10;86000000;2016-01-01\n"
        "1;NA;11;87000000;2016-01-02\n"  # later date, but anchored on 2016-01-01
        "2;;12;5;2016-01-03\n",
    )
    ev = read_events("diginetica", tmp_path)
    jan1 = 1451606400 * 1000
    assert ev["Time"].to_list() == [jan1 + 86000000, jan1 + 87000000, jan1 + 2 * 86400000 + 5]


def test_diginetica_accepts_the_sample_header_spelling(tmp_path):
    write(
        tmp_path / "x.csv", "session_id;user_id;item_id;timeframe;eventdate\n1;NA;10;5;2016-01-01\n"
    )
    assert read_events("diginetica", tmp_path, ["x.csv"])["ItemId"].to_list() == [10]


def test_yoochoose_appends_the_test_file_and_floors_seconds(tmp_path):
    write(tmp_path / "yoochoose-clicks.dat", "1,2014-04-07T10:51:09.999Z,214536502,0\n")
    write(tmp_path / "yoochoose-test.dat", "5,2014-04-07T10:54:09.001Z,214662742,S\n")
    ev = read_events("yoochoose", tmp_path)
    assert ev["key"].to_list() == [1, 5]
    assert ev["Time"].to_list() == [1396867869, 1396868049]


def test_rsc15_reads_clicks_only_as_float_seconds(tmp_path):
    write(tmp_path / "yoochoose-clicks.dat", "1,2014-04-07T10:51:09.999Z,214536502,0\n")
    write(tmp_path / "yoochoose-test.dat", "5,2014-04-07T10:54:09.001Z,214662742,S\n")
    ev = read_events("rsc15", tmp_path)
    assert ev["Time"].to_list() == [1396867869.0] and ev["Time"].dtype == pl.Float64


def test_rees46_first_appearance_ranks_and_user_sessions(tmp_path):
    write(
        tmp_path / "2019-Oct.csv",
        "\n".join(
            [
                REES46_HEADER,
                rees46_line("00:00:00", "cart", 900, 7),  # product 900 first seen in a cart event
                rees46_line("00:00:05", "view", 100, 7),
                rees46_line("00:00:05", "view", 900, 7),  # same second: 900 ranks before 100
                rees46_line("01:00:06", "view", 100, 7),  # gap 3601 s on views -> new session
                rees46_line("00:00:01", "view", 900, 3),
            ]
        )
        + "\n",
    )
    write(
        tmp_path / "2019-Nov.csv",
        REES46_HEADER + "\n" + rees46_line("00:00:02", "view", 900, 3) + "\n",
    )
    ev = read_events("rees46", tmp_path, kept_only=True)
    from recsys_pipeline.preprocessing.protocol import sessionise

    s = sessionise(ev, mode="gap", gap_on="kept", gap=3600)
    # user 7 (rank 0) first: [900, 100] then a new session [100]; user 3: Oct + Nov rows
    assert s["ItemId"].to_list() == [900, 100, 100, 900, 900]
    assert s["SessionId"].to_list() == [0, 0, 1, 2, 2]


def test_coveo_gap_on_all_events_and_hash_ranks(tmp_path):
    h = "session_id_hash,event_type,product_action,product_skus_hash,server_timestamp_epoch_ms,hashed_url\n"
    rows = [
        "sA,pageview,,,0,u",  # no sku: the empty hash takes rank 0
        "sA,event,detail,k1,1000,u",
        "sA,pageview,,,3000000,u",  # bridges the next detail event (gap on all events)
        "sA,event,detail,k2,6000000,u",
        "sA,event,detail,k1,9700000,u",  # 3.7e6 ms after the last event -> new session
    ]
    write(tmp_path / "release_10_23_2020.csv", h + "\n".join(rows) + "\n")
    ev = read_events("coveo", tmp_path)
    cfg = ProtocolConfig(
        session_mode="gap", gap_on="all", gap=3_600_000, time_unit_seconds=0.001, min_item_support=1
    )
    from recsys_pipeline.preprocessing.protocol import sessionise

    s = sessionise(ev, cfg.session_mode, cfg.gap_on, cfg.gap)
    assert s["ItemId"].to_list() == [1, 2, 1]
    assert s["SessionId"].to_list() == [0, 0, 1]


def test_gzip_files_are_read(tmp_path):
    text = "timestamp,visitorid,event,itemid,transactionid\n1000,1,view,5,\n2000,1,view,6,\n"
    write(tmp_path / "events.csv.gz", gzip.compress(text.encode()))
    assert read_events("retailrocket", tmp_path)["ItemId"].to_list() == [5, 6]
    assert [p.name for p in tmp_path.iterdir()] == ["events.csv.gz"]  # temp file removed


# ------------------------------------------------------------------------------- bad input


def test_missing_file_says_where_to_put_it_and_where_it_is_published(tmp_path):
    with pytest.raises(RawDataError) as err:
        read_events("rees46", tmp_path)
    msg = str(err.value)
    assert "2019-Oct.csv" in msg and str(tmp_path) in msg and "kaggle.com" in msg


def test_missing_column_is_named(tmp_path):
    write(tmp_path / "events.csv", "timestamp,visitor,event,itemid\n1,1,view,1\n")
    with pytest.raises(RawDataError, match=r"lacks column\(s\) \['visitorid'\]") as err:
        read_events("retailrocket", tmp_path)
    assert "events.csv" in str(err.value)


def test_wrong_separator_is_reported_as_missing_columns(tmp_path):
    write(
        tmp_path / "train-item-views.csv",
        "sessionId,userId,itemId,timeframe,eventdate\n1,,2,3,2016-01-01\n",
    )
    with pytest.raises(RawDataError, match="lacks column"):
        read_events("diginetica", tmp_path)


@pytest.mark.parametrize("content", ["", "timestamp,visitorid,event,itemid,transactionid\n"])
def test_empty_file(tmp_path, content):
    write(tmp_path / "events.csv", content)
    with pytest.raises(RawDataError, match="empty|no data rows") as err:
        read_events("retailrocket", tmp_path)
    assert "events.csv" in str(err.value)


def test_unparsable_timestamp_names_file_column_and_line(tmp_path):
    write(
        tmp_path / "2019-Oct.csv",
        f"{REES46_HEADER}\n{rees46_line('00:00:00', 'view', 1, 1)}\n"
        "yesterday at noon,view,2,1,,,1.0,1,s\n",
    )
    write(tmp_path / "2019-Nov.csv", f"{REES46_HEADER}\n{rees46_line('00:00:00', 'view', 1, 1)}\n")
    with pytest.raises(RawDataError) as err:
        read_events("rees46", tmp_path)
    msg = str(err.value)
    assert (
        "2019-Oct.csv" in msg and "'event_time'" in msg and "line 3" in msg and "yesterday" in msg
    )


def test_null_ids_name_the_first_offending_rows(tmp_path):
    write(
        tmp_path / "events.csv",
        "timestamp,visitorid,event,itemid,transactionid\n1,1,view,5,\n2,,view,6,\n3,2,view,7,\n4,,view,8,\n",
    )
    with pytest.raises(RawDataError) as err:
        read_events("retailrocket", tmp_path)
    msg = str(err.value)
    assert "'visitorid'" in msg and "missing" in msg and "line 3" in msg and "line 5" in msg


def test_truncated_gzip(tmp_path):
    blob = gzip.compress(
        ("timestamp,visitorid,event,itemid,transactionid\n" + "1,1,view,5,\n" * 5000).encode()
    )
    write(tmp_path / "events.csv.gz", blob[: len(blob) // 2])
    with pytest.raises(RawDataError, match="not a complete gzip file") as err:
        read_events("retailrocket", tmp_path)
    assert "events.csv.gz" in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == ["events.csv.gz"]  # nothing left behind


def test_non_utf8_bytes_name_the_line(tmp_path):
    body = b"timestamp,visitorid,event,itemid,transactionid\n1,1,view,5,\n2,1,vi\xffew,6,\n"
    write(tmp_path / "events.csv", body)
    with pytest.raises(RawDataError, match="line 3 is not valid UTF-8"):
        read_events("retailrocket", tmp_path)


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown raw format"):
        read_events("netflix", ".")


def test_run_protocol_on_empty_result_says_so(tmp_path):
    write(tmp_path / "events.csv", "timestamp,visitorid,event,itemid,transactionid\n1,1,view,5,\n")
    ev = read_events("retailrocket", tmp_path)
    with pytest.raises(ValueError, match="No event survived"):
        run_protocol(
            ev,
            ProtocolConfig(
                session_mode="gap",
                gap_on="all",
                gap=3_600_000,
                time_unit_seconds=0.001,
                n_test_days=7,
            ),
        )


RR_HEADER = "timestamp,visitorid,event,itemid,transactionid\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('1442545000000,1,view,5,\n1442545100000,1,view,6,"x\n1442545200000,2,view,6,\n',
         r"events\.csv line 3 has an unbalanced quote"),
        ("1442545000000,1,view,-5,\n", r"column 'itemid' has negative values .* line 2: '-5'"),
        ("1442545000000,-1,view,5,\n", r"column 'visitorid' has negative values"),
        ("-1442545000000,1,view,5,\n", r"column 'timestamp' has negative values"),
    ],
    ids=["stray-quote", "negative-item", "negative-visitor", "negative-time"],
)  # fmt: skip
def test_bad_rows_name_file_column_and_line(tmp_path, body, message):
    write(tmp_path / "events.csv", RR_HEADER + body)
    with pytest.raises(RawDataError, match=message) as err:
        read_events("retailrocket", tmp_path)
    assert str(tmp_path / "events.csv") in str(err.value)


def test_a_utf8_byte_order_mark_is_read(tmp_path):
    (tmp_path / "events.csv").write_bytes(
        b"\xef\xbb\xbf" + (RR_HEADER + "1442545000000,1,view,5,\n").encode()
    )
    events = read_events("retailrocket", tmp_path)
    assert events["ItemId"].to_list() == [5] and events["Time"].to_list() == [1442545000000]

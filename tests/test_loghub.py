"""loghub readers and log windows: both label styles, raw logs through Drain3, bad input."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from stages.core.errors import InputError
from stages.features.log_windows import (PAD, chronological_split, fixed_windows, from_windowset, load_loghub,
                                         pack)
from stages.formats.loghub import (LoghubInput, read_block_labels, read_lines, read_raw, read_structured,
                                   resolve_input)

BGL_NORMAL = ["instruction cache parity error corrected", "generating core.{n}",
              "ciod: Message code {n} is not {m} or {k}", "{n} double-hummer alignment exceptions",
              "CE sym {n}, at 0x{h}, mask 0x{m}"]
BGL_ALERT = ["data TLB error interrupt", "rts: kernel terminated for reason {n}",
             "machine check interrupt (bit=0x{m}): L2 dcache unit data parity error"]


def _fill(template: str, rng: np.random.Generator) -> str:
    return template.format(n=rng.integers(1, 9999), m=rng.integers(1, 99), k=rng.integers(1, 99),
                           h=f"{rng.integers(0, 2**24):06x}")


def write_bgl(directory, n_lines: int = 600, seed: int = 0, bursts=((250, 290), (480, 520))):
    """A BGL-like system: structured CSV (with templates) and the same lines as a raw .log."""
    rng = np.random.default_rng(seed)
    nodes = [f"R0{i}-M1-N0-C:J12-U11" for i in range(4)]
    rows, raw = [], []
    for i in range(n_lines):
        alert = any(a <= i < b for a, b in bursts) and rng.random() < 0.5
        pool, label = (BGL_ALERT, "KERNDTLB") if alert else (BGL_NORMAL, "-")
        k = int(rng.integers(len(pool)))
        content = _fill(pool[k], rng)
        node = nodes[int(rng.integers(len(nodes)))]
        ts = 1117838570 + i
        level = "FATAL" if alert else "INFO"
        template = pool[k].replace("{n}", "<*>").replace("{m}", "<*>").replace("{k}", "<*>").replace("{h}", "<*>")
        rows.append({"LineId": str(i + 1), "Label": label, "Timestamp": str(ts), "Date": "2005.06.03", "Node": node,
                     "Time": "2005-06-03-15.42.50.675872", "NodeRepeat": node, "Type": "RAS", "Component": "KERNEL",
                     "Level": level, "Content": content, "EventId": f"E{k + (10 if alert else 0)}",
                     "EventTemplate": template})
        raw.append(f"{label} {ts} 2005.06.03 {node} 2005-06-03-15.42.50.675872 {node} RAS KERNEL {level} {content}")
    csv = directory / "BGL_tiny.log_structured.csv"
    pl.DataFrame(rows).write_csv(csv)
    log = directory / "BGL_tiny.log"
    log.write_text("\n".join(raw) + "\n")
    return csv, log


HDFS_NORMAL = ["Receiving block {b} src: /10.0.0.{n}:5000 dest: /10.0.0.{m}:50010",
               "PacketResponder {n} for block {b} terminating",
               "Received block {b} of size {n} from /10.0.0.{m}",
               "BLOCK* NameSystem.addStoredBlock: blockMap updated: 10.0.0.{n}:50010 is added to {b} size {m}"]
HDFS_ERROR = ["Exception in receiveBlock for block {b} java.io.IOException: Connection reset by peer",
              "writeBlock {b} received exception java.io.EOFException"]


def write_hdfs(directory, n_blocks: int = 80, seed: int = 0, anomaly_every: int = 6):
    """An HDFS-like system: sessions by block id, labels in anomaly_label.csv."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for j in range(n_blocks):
        blk = f"blk_{'-' if j % 2 else ''}{1000 + j * 7919}"
        bad = j % anomaly_every == 3
        labels.append({"BlockId": blk, "Label": "Anomaly" if bad else "Normal"})
        events = [HDFS_NORMAL[i % 4] for i in range(int(rng.integers(3, 7)))]
        if bad:
            events.insert(2, HDFS_ERROR[j % 2])
        for e in events:
            content = e.format(b=blk, n=rng.integers(1, 250), m=rng.integers(1, 250))
            rows.append({"LineId": str(len(rows) + 1), "Date": "081109", "Time": "203615", "Pid": "148",
                         "Level": "INFO", "Component": "dfs.DataNode", "Content": content})
    csv = directory / "HDFS_tiny.log_structured.csv"
    pl.DataFrame(rows).write_csv(csv)  # no EventTemplate: templates are mined with Drain3
    lab = directory / "anomaly_label.csv"
    pl.DataFrame(labels).write_csv(lab)
    return csv, lab


def test_structured_bgl_labels_nodes_and_templates(tmp_path):
    csv, _ = write_bgl(tmp_path, n_lines=100, bursts=((40, 60),))
    lines = read_structured(csv)
    assert lines.columns == ["line", "label", "node", "content", "template"]
    assert lines["line"].to_list() == list(range(1, 101))
    src = pl.read_csv(csv)
    assert (lines["label"].to_numpy() == (src["Label"] != "-").to_numpy()).all()
    assert lines["node"][0].startswith("R0")
    assert set(lines["template"]) <= {t.replace("{n}", "<*>") for t in BGL_NORMAL + BGL_ALERT} | set(
        src["EventTemplate"])


def test_raw_bgl_log_is_parsed_and_mined(tmp_path):
    csv, raw = write_bgl(tmp_path, n_lines=200)
    with open(raw, "a") as fh:
        fh.write("a wrapped continuation line\n")
    lines = read_raw(raw, "bgl")
    assert len(lines) == 200  # the line that fits no BGL header is dropped (with a warning)
    assert (lines["label"].to_numpy() == read_structured(csv)["label"].to_numpy()).all()
    assert lines["template"].n_unique() < 20  # Drain3 folds variables into templates
    assert any("<NUM>" in t for t in lines["template"].unique())  # the pipeline's masks apply


def test_fixed_windows_by_line_and_by_node(tmp_path):
    csv, _ = write_bgl(tmp_path, n_lines=100, bursts=((40, 60),))
    lines = read_structured(csv)
    seqs = fixed_windows(lines, length=10, max_len=6)
    assert len(seqs) == 10
    expect = lines["label"].to_numpy().reshape(10, 10).max(1)
    assert (seqs.labels == expect).all()
    assert (seqs.lengths == 6).all() and np.asarray(seqs.counts.sum(1)).ravel().tolist() == [10] * 10
    by_node = fixed_windows(lines, length=10, by_node=True)
    assert by_node.counts.sum() == 100
    first_lines = lines.group_by("node").agg(pl.len()).sort("node")
    assert len(by_node) == int(sum(-(-n // 10) for n in first_lines["len"]))


def test_hdfs_sessions_use_block_labels(tmp_path):
    csv, lab = write_hdfs(tmp_path, n_blocks=30)
    seqs = load_loghub(str(csv), labels=str(lab))
    assert len(seqs) == 30
    truth = pl.read_csv(lab)
    assert int(seqs.labels.sum()) == int((truth["Label"] == "Anomaly").sum())
    assert seqs.labels[3] == 1 and seqs.labels[0] == 0  # ordered by first appearance of the block
    train, val, test = chronological_split(seqs, 0.5, 0.2)
    assert (len(train), len(val), len(test)) == (15, 6, 9)


def test_pack_keeps_most_recent_events():
    ids, lengths, counts = pack(np.array([0, 0, 0, 2]), np.array([5, 6, 7, 1]), n_units=3, n_templates=8, max_len=2)
    assert ids.tolist() == [[6, 7], [PAD, PAD], [1, PAD]]
    assert lengths.tolist() == [2, 0, 1]
    assert counts.toarray()[0, 5:8].tolist() == [1, 1, 1]


def test_windowset_windows_per_service():
    from test_metalog import TARGET_TEMPLATES, make_log_windowset

    train, _, _ = make_log_windowset(TARGET_TEMPLATES, T=200)
    whole = from_windowset(train, max_len=200)
    assert len(whole) == len(train)
    s = int(train.starts[3])
    ev = train.log_events[(train.log_events[:, 0] >= s) & (train.log_events[:, 0] < s + train.window)]
    assert whole.ids[3, :whole.lengths[3]].tolist() == ev[:, 2].tolist()
    per = from_windowset(train, max_len=200, per_service=True)
    assert set(np.unique(per.window)) == set(range(len(train)))
    assert per.counts.sum() == whole.counts.sum()
    scores = np.arange(len(per), dtype=float)
    assert per.window_max(scores)[3] == scores[per.window == 3].max()


def test_bad_input_names_file_and_column(tmp_path):
    csv, _ = write_bgl(tmp_path, n_lines=20)
    df = pl.read_csv(csv)
    no_content = tmp_path / "no_content.csv"
    df.drop("Content").write_csv(no_content)
    with pytest.raises(InputError, match=r"no_content\.csv: column Content"):
        read_structured(no_content)
    no_label = tmp_path / "no_label.csv"
    df.drop("Label").write_csv(no_label)
    with pytest.raises(InputError, match=r"no_label\.csv: column Label"):
        read_lines(no_label)
    bad_id = tmp_path / "bad_id.csv"
    df.with_columns(pl.when(pl.col("LineId") == 5).then(pl.lit("x")).otherwise(pl.col("LineId").cast(pl.Utf8))
                    .alias("LineId")).write_csv(bad_id)
    with pytest.raises(InputError, match=r"bad_id\.csv: row 6 column LineId"):
        read_structured(bad_id)
    labels = tmp_path / "anomaly_label.csv"
    labels.write_text("BlockId,Label\nblk_1,Normal\nblk_2,Broken\n")
    with pytest.raises(InputError, match=r"anomaly_label\.csv: row 3 column Label"):
        read_block_labels(labels)
    labels.write_text("Block,Label\nblk_1,Normal\n")
    with pytest.raises(InputError, match="column BlockId"):
        read_block_labels(labels)
    hcsv, hlab = write_hdfs(tmp_path, n_blocks=12)
    pl.read_csv(hlab).head(5).write_csv(hlab)
    with pytest.raises(InputError, match=r"anomaly_label\.csv: BlockId blk_"):
        load_loghub(str(hcsv), labels=str(hlab))
    with pytest.raises(InputError, match="lines in the hdfs log layout"):
        read_raw(csv, "hdfs")
    mystery = tmp_path / "mystery.log"
    mystery.write_bytes((tmp_path / "BGL_tiny.log").read_bytes())
    with pytest.raises(InputError, match="--style"):
        read_lines(mystery)  # a raw log whose name does not say its layout


def test_system_folder_or_file_resolves_to_its_files(tmp_path):
    bgl = tmp_path / "BGL"
    bgl.mkdir()
    csv, raw = write_bgl(bgl, n_lines=40)
    (bgl / "BGL_tiny.log_templates.csv").write_text("EventId,EventTemplate\nE1,x\n")  # loghub ships it too
    got = resolve_input(bgl)
    assert got.path == csv and got.style is None and got.labels is None
    assert resolve_input(csv).path == csv  # a file stays itself
    assert read_lines(bgl).height == 40  # the folder reads like its structured CSV
    assert resolve_input(raw) == LoghubInput(raw, "bgl", None)  # layout from the file name
    csv.unlink()
    assert resolve_input(bgl) == LoghubInput(raw, "bgl", None)  # no structured CSV: the raw log
    hdfs = tmp_path / "HDFS"
    hdfs.mkdir()
    hcsv, hlab = write_hdfs(hdfs, n_blocks=12)
    assert resolve_input(hdfs) == LoghubInput(hcsv, None, hlab)  # block labels found beside it
    other = tmp_path / "elsewhere.csv"
    assert resolve_input(hdfs, labels=other).labels == other  # an explicit label file wins
    write_bgl(hdfs, n_lines=10)
    with pytest.raises(InputError, match=r"HDFS: expected a folder holding exactly one loghub \*_structured\.csv"):
        resolve_input(hdfs)
    with pytest.raises(InputError, match="an existing loghub"):
        resolve_input(tmp_path / "nowhere")

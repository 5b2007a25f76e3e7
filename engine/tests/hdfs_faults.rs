//! Faults of a real HDFS (3 DataNodes, replication 3) under a journaled volume: a DataNode
//! killed does not stop the volume; a NameNode restart stalls uploads, then they resume with
//! nothing lost; a NameNode down for long gives clear errors within bounded time, not hangs.
//! These tests stop HDFS daemons, so each holds the test HDFS exclusively.
#![cfg(feature = "hdfs")]
#![cfg(feature = "hdfs")]

mod common;
mod hdfs_util;

use common::{read_all, Rng};
use hdfs_util::*;
use hlfs_engine::backend::{Backend, HdfsBackend, HdfsOptions, JournalOptions, JournaledBackend};
use hlfs_engine::{CreateOptions, OpenOptions, Volume};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIZE: u64 = 32 << 20;

fn create(url: &str, journal: &std::path::Path) -> Volume {
    let opts = CreateOptions {
        size: SIZE,
        segment_size: 1 << 20,
        checkpoint_interval: 8 << 20,
        ..Default::default()
    };
    Volume::create(journaled(url, journal), &opts, &OpenOptions::default()).expect("create")
}

/// Writes `n` random 4-64 KiB blocks (flushing every 16) into both the volume and the model.
fn write_some(v: &mut Volume, model: &mut [u8], rng: &mut Rng, n: usize) {
    for i in 0..n {
        let len = 4096 * (1 + rng.below(16)) as usize;
        let off = rng.below(SIZE - len as u64) / 4096 * 4096;
        let mut d = vec![0u8; len];
        rng.fill(&mut d);
        v.write(off, &d).expect("write");
        model[off as usize..off as usize + len].copy_from_slice(&d);
        if i % 16 == 15 {
            v.flush().expect("flush");
        }
    }
    v.flush().expect("flush");
}

/// Checks the image on the remote alone (no journal): everything was uploaded.
fn check_remote(url: &str, model: &[u8]) {
    let mut v = Volume::open(hdfs(url), &OpenOptions::default()).expect("open the remote alone");
    assert!(
        read_all(&mut v) == model,
        "remote image differs from the model"
    );
    v.close().expect("close");
}

#[test]
fn datanode_killed_does_not_stop_the_volume() {
    let Some(base) = hdfs_url("datanode_killed_does_not_stop_the_volume") else {
        return;
    };
    let _g = exclusive();
    let url = volume_url(&base, "dnkill");
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    // A journal with room for a long upload stall, should a pipeline still wait on the dead
    // DataNode (datanode_lost_uploads_go_on_without_it checks that none does).
    let jopts = JournalOptions {
        max_bytes: 128 << 20,
        stall_timeout: Duration::from_secs(120),
        drain_timeout: Duration::from_secs(120),
    };
    let jb = Arc::new(JournaledBackend::open(hdfs(&url), &journal, jopts).expect("journal"));
    let opts = CreateOptions {
        size: SIZE,
        segment_size: 1 << 20,
        checkpoint_interval: 8 << 20,
        ..Default::default()
    };
    let mut v = Volume::create(jb, &opts, &OpenOptions::default()).expect("create");
    let mut model = vec![0u8; SIZE as usize];
    let mut rng = Rng::new(11);
    write_some(&mut v, &mut model, &mut rng, 300);
    let down = kill_node("datanode1");
    let t0 = Instant::now();
    write_some(&mut v, &mut model, &mut rng, 1500);
    eprintln!(
        "wrote 1500 blocks with a DataNode down in {:?}",
        t0.elapsed()
    );
    // Reads of sealed, uploaded segments still work (from the remaining replicas).
    let mut buf = vec![0u8; SIZE as usize];
    v.read(0, &mut buf).expect("read with a DataNode down");
    assert!(buf == model);
    // Uploads catch up (at the latest once the DataNode is back); nothing is lost.
    down.restart();
    write_some(&mut v, &mut model, &mut rng, 100);
    v.close().expect("close");
    // Dropping the journaled backend drains every upload to HDFS.
    check_remote(&url, &model);
}

#[test]
fn namenode_restart_stalls_then_resumes_with_nothing_lost() {
    let Some(base) = hdfs_url("namenode_restart_stalls_then_resumes_with_nothing_lost") else {
        return;
    };
    let _g = exclusive();
    let url = volume_url(&base, "nnrestart");
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    let mut v = create(&url, &journal);
    let mut model = vec![0u8; SIZE as usize];
    let mut rng = Rng::new(12);
    write_some(&mut v, &mut model, &mut rng, 200);
    let down = kill_node("namenode");
    // Writes and flushes go on against the local journal while the NameNode is away.
    let t0 = Instant::now();
    write_some(&mut v, &mut model, &mut rng, 300);
    eprintln!(
        "wrote 300 blocks with the NameNode down in {:?}",
        t0.elapsed()
    );
    std::thread::sleep(Duration::from_secs(2));
    down.restart();
    write_some(&mut v, &mut model, &mut rng, 200);
    let mut buf = vec![0u8; SIZE as usize];
    v.read(0, &mut buf).expect("read after the restart");
    assert!(buf == model);
    v.close().expect("close");
    check_remote(&url, &model);
}

#[test]
fn namenode_down_for_long_gives_clear_errors() {
    let Some(base) = hdfs_url("namenode_down_for_long_gives_clear_errors") else {
        return;
    };
    let _g = exclusive();
    let url = volume_url(&base, "nndown");
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    let jopts = JournalOptions {
        max_bytes: 16 << 20,
        stall_timeout: Duration::from_secs(3),
        drain_timeout: Duration::from_secs(2),
    };
    let hopts = HdfsOptions {
        op_timeout: Duration::from_secs(4),
        connect_timeout: Duration::from_secs(3),
        ..test_options()
    };
    let opts = CreateOptions {
        size: SIZE,
        segment_size: 1 << 20,
        checkpoint_interval: 8 << 20,
        ..Default::default()
    };
    let raw = Arc::new(HdfsBackend::connect_with(&url, hopts.clone()).expect("connect"));
    let jb =
        Arc::new(JournaledBackend::open(raw.clone(), &journal, jopts.clone()).expect("journal"));
    let mut v = Volume::create(jb, &opts, &OpenOptions::default()).expect("create");
    let mut model = vec![0u8; SIZE as usize];
    let mut rng = Rng::new(13);
    write_some(&mut v, &mut model, &mut rng, 100);
    let down = kill_node("namenode");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // The raw backend: an error within its timeout, naming the volume.
        let t0 = Instant::now();
        let e = raw.list().expect_err("list with the NameNode down");
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        assert!(e.to_string().contains(&url), "{e}");
        eprintln!("raw backend error: {e}");
        // The journaled volume: writes go on until the journal is full, then fail after the
        // stall timeout with an error that says why.
        let t0 = Instant::now();
        let mut err = None;
        let mut flushed = model.clone();
        for _ in 0..2000 {
            let len = 64 * 1024;
            let off = rng.below(SIZE - len as u64) / 4096 * 4096;
            let mut d = vec![0u8; len];
            rng.fill(&mut d);
            match v.write(off, &d).and_then(|()| v.flush()) {
                Ok(()) => {
                    model[off as usize..off as usize + len].copy_from_slice(&d);
                    flushed.copy_from_slice(&model);
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let e = err.expect("writes must fail once the journal is full");
        assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
        let msg = e.to_string();
        eprintln!("journaled volume error after {:?}: {msg}", t0.elapsed());
        assert!(msg.contains("journal full"), "{msg}");
        flushed
    }));
    // Opening another volume while the NameNode is down: a clear error, quickly.
    let t0 = Instant::now();
    let e = HdfsBackend::connect_with(&volume_url(&base, "nndown2"), hopts.clone())
        .expect_err("connect with the NameNode down");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    eprintln!("connect error: {e}");
    drop(v);
    down.restart();
    let flushed = result.unwrap_or_else(|p| std::panic::resume_unwind(p));
    // Everything flushed before the failure is there after reopening (journal replayed).
    let raw = Arc::new(HdfsBackend::connect_with(&url, hopts).expect("connect"));
    let jb: Arc<dyn Backend> =
        Arc::new(JournaledBackend::open(raw, &journal, journal_options()).expect("replay"));
    let mut v = Volume::open(jb, &OpenOptions::default()).expect("reopen");
    assert!(read_all(&mut v) == flushed, "flushed data lost");
    v.close().expect("close");
}

/// Issue 15: a DataNode killed (and NOT declared dead: the NameNode's default detection takes
/// 10.5 minutes, and it keeps placing new blocks on it) must not stop uploads. Writes go on
/// without a long stall, the journal drains to HDFS with the DataNode still down (so every
/// pipeline, old and new, went on without it), and the remote alone holds every flushed byte.
/// Issue 15: an append to a closed object whose block lists a killed DataNode first (the
/// NameNode still counts it live) goes on at once with the other two. The DataNodes hold the
/// block FINALIZED, so the pipeline recovery must ask for append recovery; asked for streaming
/// recovery they close the connection, the append failed, and the journal's retry waited about
/// 30 s for lease recovery of the half-open file (the stall of datanode_lost_uploads_go_on_without_it).
/// The NameNode orders a block's locations per call, so with a dozen objects some list the dead
/// DataNode first (all of them miss it with probability (2/3)^12, under 1%).
#[test]
fn appends_to_closed_objects_go_on_without_a_killed_first_datanode() {
    use hlfs_engine::backend::AppendBackend;
    let Some(base) = hdfs_url("appends_to_closed_objects_go_on_without_a_killed_first_datanode")
    else {
        return;
    };
    let _g = exclusive();
    let url = volume_url(&base, "reappend");
    let b = hdfs(&url);
    let mut rng = Rng::new(31);
    let mut want = Vec::new();
    for i in 0..12 {
        let name = format!("seg-{i:08x}");
        // Not a multiple of the 512-byte checksum chunk: the append starts inside one.
        let mut d = vec![0u8; 100_000 + 77 * i];
        rng.fill(&mut d);
        let mut w = b.create(&name).expect("create");
        w.append(&d).expect("append");
        w.finish().expect("finish");
        want.push((name, d));
    }
    let down = kill_node("datanode0");
    let mut longest = Duration::ZERO;
    for (name, d) in want.iter_mut() {
        let t = Instant::now();
        let (mut w, len) = b
            .open_append(name)
            .unwrap_or_else(|e| panic!("reopen {name} with a DataNode down: {e}"));
        assert_eq!(len, d.len() as u64, "{name}: length at reopen");
        let mut more = vec![0u8; 70_000];
        rng.fill(&mut more);
        w.append(&more)
            .unwrap_or_else(|e| panic!("append to {name} with a DataNode down: {e}"));
        w.sync()
            .unwrap_or_else(|e| panic!("sync {name} with a DataNode down: {e}"));
        w.finish()
            .unwrap_or_else(|e| panic!("close {name} with a DataNode down: {e}"));
        longest = longest.max(t.elapsed());
        d.extend_from_slice(&more);
    }
    eprintln!("12 reopened appends with a DataNode down; longest {longest:?}");
    for (name, d) in &want {
        assert_eq!(&b.read_all(name).expect("read back"), d, "{name}: contents");
    }
    assert!(
        longest <= Duration::from_secs(5),
        "an append with a DataNode down took {longest:?}"
    );
    down.restart();
}

#[test]
fn datanode_lost_uploads_go_on_without_it() {
    let Some(base) = hdfs_url("datanode_lost_uploads_go_on_without_it") else {
        return;
    };
    let _g = exclusive();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let url = volume_url(&base, "dnlost");
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    let jb = journaled(&url, &journal);
    let opts = CreateOptions {
        size: SIZE,
        segment_size: 1 << 20,
        checkpoint_interval: 8 << 20,
        ..Default::default()
    };
    let mut v = Volume::create(jb.clone(), &opts, &OpenOptions::default()).expect("create");
    let mut model = vec![0u8; SIZE as usize];
    let mut rng = Rng::new(15);
    write_some(&mut v, &mut model, &mut rng, 300);
    jb.drain(Duration::from_secs(60))
        .expect("drain before the kill");
    let down = kill_node("datanode0");
    let t0 = Instant::now();
    let mut longest = Duration::ZERO;
    for i in 0..1500 {
        let len = 4096 * (1 + rng.below(16)) as usize;
        let off = rng.below(SIZE - len as u64) / 4096 * 4096;
        let mut d = vec![0u8; len];
        rng.fill(&mut d);
        let t = Instant::now();
        v.write(off, &d).expect("write with a DataNode down");
        if i % 16 == 15 {
            v.flush().expect("flush with a DataNode down");
        }
        if t.elapsed() > Duration::from_secs(1) {
            eprintln!(
                "{:?} after the kill: operation {i} took {:?}",
                t0.elapsed(),
                t.elapsed()
            );
        }
        longest = longest.max(t.elapsed());
        model[off as usize..off as usize + len].copy_from_slice(&d);
    }
    v.flush().expect("flush");
    eprintln!(
        "wrote 1500 blocks with a DataNode down in {:?}; longest write or flush {:?}",
        t0.elapsed(),
        longest
    );
    // Everything reaches HDFS while the DataNode is still down (and, with the NameNode's
    // default dead-node detection, still counted live): no pipeline waits for it.
    let t1 = Instant::now();
    jb.drain(Duration::from_secs(20))
        .expect("journal drains to HDFS with a DataNode down");
    eprintln!("journal drained in {:?} with a DataNode down", t1.elapsed());
    assert_eq!(jb.journal_bytes(), 0, "journal released");
    // Issue 15's goal. It used to fail in about half the runs with one 29-31 s stall (an
    // append to a closed segment whose block listed the dead DataNode first: see
    // appends_to_closed_objects_go_on_without_a_killed_first_datanode); now 0.1-0.2 s.
    assert!(
        longest <= Duration::from_secs(2),
        "a write or flush stalled {longest:?} after the DataNode kill"
    );
    v.close().expect("close");
    drop(jb);
    // The remote alone (no journal) holds every flushed byte, still without the DataNode.
    check_remote(&url, &model);
    down.restart();
}

/// Issue 15: a stop never takes longer than its bound, even with a DataNode dead and the
/// NameNode gone (uploads pending); with journal entries left, the lease stays this host's:
/// the same host's next opener (here: this process, its lease ended) gets the volume at once,
/// with every flushed byte readable while the journal is still being replayed; another host
/// is refused (it would open the volume without the journal's writes).
#[test]
fn stop_with_journal_pending_is_bounded_and_this_host_reopens_at_once() {
    let Some(base) = hdfs_url("stop_with_journal_pending_is_bounded_and_this_host_reopens_at_once")
    else {
        return;
    };
    let _g = exclusive();
    let url = volume_url(&base, "stoppending");
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    let op_timeout = Duration::from_secs(10);
    let hopts = HdfsOptions {
        op_timeout,
        ..test_options()
    };
    let jopts = |drain: Duration| JournalOptions {
        max_bytes: 64 << 20,
        drain_timeout: drain,
        ..journal_options()
    };
    let open = |drain: Duration| {
        let raw = Arc::new(HdfsBackend::connect_with(&url, hopts.clone()).expect("connect"));
        Arc::new(JournaledBackend::open(raw, &journal, jopts(drain)).expect("open journal"))
    };
    let opts = CreateOptions {
        size: SIZE,
        segment_size: 1 << 20,
        checkpoint_interval: 8 << 20,
        ..Default::default()
    };
    let jb = open(op_timeout / 2);
    let mut v = Volume::create(jb.clone(), &opts, &OpenOptions::default()).expect("create");
    let mut model = vec![0u8; SIZE as usize];
    let mut rng = Rng::new(16);
    write_some(&mut v, &mut model, &mut rng, 200);
    jb.drain(Duration::from_secs(60)).expect("drain");
    let dn = kill_node("datanode0");
    write_some(&mut v, &mut model, &mut rng, 200);
    // The NameNode goes too: what is written now stays in the journal.
    let nn = kill_node("namenode");
    write_some(&mut v, &mut model, &mut rng, 200);
    let t0 = Instant::now();
    v.close().expect("close");
    drop(jb);
    let stop = t0.elapsed();
    eprintln!("stop with a DataNode and the NameNode down: {stop:?}");
    assert!(stop <= op_timeout, "stop took {stop:?}");
    assert!(journal_backlog(&journal) > 0, "nothing left to replay");
    nn.restart_expecting(2);

    // This host (this process, whose lease ended) reopens at once: no lease recovery wait,
    // and the journal is replayed behind the volume's back.
    let t0 = Instant::now();
    let jb = open(op_timeout / 2);
    let mut v = Volume::open(jb.clone(), &OpenOptions::default()).expect("reopen");
    let reopen = t0.elapsed();
    eprintln!("reopen with the journal pending and a DataNode down: {reopen:?}");
    assert!(reopen <= Duration::from_secs(5), "reopen took {reopen:?}");
    assert!(read_all(&mut v) == model, "flushed data lost");
    let t1 = Instant::now();
    jb.drain(Duration::from_secs(60))
        .expect("the replay finishes with a DataNode down");
    eprintln!("background replay done in {:?}", t1.elapsed());

    v.close().expect("close");
    drop(jb);

    // A stop with the NameNode up but uploads left (a budget too short for them): the lease is
    // left marked as this host's.
    let jb = open(Duration::from_secs(1));
    let mut v = Volume::open(jb.clone(), &OpenOptions::default()).expect("reopen");
    // 48 MiB in 1 MiB writes reach the journal far faster than HDFS (3 replicas) takes them,
    // so uploads are left whatever the upload speed (600 small writes no longer were: since
    // the upload fixes of issue 15 the uploader kept up with them).
    for i in 0..48u64 {
        let mut d = vec![0u8; 1 << 20];
        rng.fill(&mut d);
        let off = (i << 20) % SIZE;
        v.write(off, &d).expect("write");
        model[off as usize..off as usize + d.len()].copy_from_slice(&d);
    }
    v.close().expect("close");
    let t0 = Instant::now();
    drop(jb);
    eprintln!("stop with a 1 s budget: {:?}", t0.elapsed());
    assert!(t0.elapsed() <= Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(journal_backlog(&journal) > 0, "nothing left to replay");
    let raw = Arc::new(HdfsBackend::connect_with(&url, hopts.clone()).expect("connect"));
    let mark = String::from_utf8(raw.read_all("writer.holder").expect("holder")).expect("utf8");
    assert!(mark.contains("\npending: journal "), "{mark:?}");
    // Another host is refused, naming the host that holds the journal.
    let me = mark.lines().next().expect("holder line").to_string();
    raw.delete("writer.holder").expect("delete holder");
    let mut w = raw.create("writer.holder").expect("forge holder");
    w.append(mark.replace(" on ", " on another-host.example ").as_bytes())
        .expect("append");
    w.finish().expect("close");
    drop(w);
    let e = raw
        .lease("other")
        .expect_err("another host takes a lease left pending");
    let msg = e.to_string();
    eprintln!("another host: {msg}");
    assert!(msg.contains("stopped with journal"), "{msg}");
    raw.delete("writer.holder").expect("delete holder");
    let mut w = raw.create("writer.holder").expect("restore holder");
    w.append(mark.as_bytes()).expect("append");
    w.finish().expect("close");
    drop(w);
    assert!(me.contains(&format!("pid {}", std::process::id())), "{me}");
    let t0 = Instant::now();
    let jb = open(Duration::from_secs(60));
    let mut v = Volume::open(jb.clone(), &OpenOptions::default()).expect("reopen");
    eprintln!("reopen after a stop with uploads left: {:?}", t0.elapsed());
    assert!(t0.elapsed() <= Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(read_all(&mut v) == model, "flushed data lost");
    v.close().expect("close");
    drop(jb);
    assert_eq!(journal_backlog(&journal), 0, "journal not drained at close");
    check_remote(&url, &model);
    dn.restart();
}

//! A read that finds the process out of descriptors closes read handles and tries again rather
//! than fail (issue 17: with a 300-descriptor limit, idle D-Bus connections made a guest READ
//! fail with EIO "Too many open files"). Alone in its test binary: it lowers the process's
//! descriptor limit and then uses up every descriptor.

use hlfs_engine::backend::{Backend, LocalBackend};
use std::fs::File;

fn put(b: &LocalBackend, name: &str, byte: u8) {
    let mut w = b.create(name).expect("create");
    w.append(&[byte; 4096]).expect("append");
    w.sync().expect("sync");
}

fn get(b: &LocalBackend, name: &str, byte: u8) {
    let mut buf = [0u8; 512];
    b.read_at(name, 1024, &mut buf)
        .unwrap_or_else(|e| panic!("read {name}: {e}"));
    assert_eq!(buf, [byte; 512], "{name}");
}

#[test]
fn reads_survive_descriptor_exhaustion() {
    let lim = libc::rlimit {
        rlim_cur: 256,
        rlim_max: 256,
    };
    // SAFETY: setrlimit reads one struct we own.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let d1 = tempfile::tempdir().expect("tempdir");
    let d2 = tempfile::tempdir().expect("tempdir");
    let b1 = LocalBackend::new(d1.path()).expect("backend");
    let b2 = LocalBackend::new(d2.path()).expect("backend");
    put(&b1, "a", 1);
    put(&b1, "b", 2);
    put(&b2, "c", 3);
    get(&b1, "a", 1); // a's handle is open
    let mut hog = Vec::new();
    let err = loop {
        match File::open("/dev/null") {
            Ok(f) => hog.push(f),
            Err(e) => break e,
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");
    // b needs a descriptor: the backend closes a's and reads b; then the other way round.
    get(&b1, "b", 2);
    get(&b1, "a", 1);
    // A backend with no handle of its own to close uses the reserve.
    get(&b2, "c", 3);
    drop(hog);
    get(&b1, "b", 2);
}

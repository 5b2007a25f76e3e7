//! The uploader thread: sends queued journal items to the remote in order, makes them durable
//! there, publishes what the remote can now serve, and releases journal files.

use super::*;

impl Inner {
    pub(super) fn upload_loop(self: Arc<Self>) {
        let mut up = Uploader::default();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.step(&mut up) {
                Ok(true) => backoff = Duration::from_millis(100),
                Ok(false) => {
                    let st = self.lock();
                    if st.shutdown && st.cursor >= st.queue.len() {
                        break;
                    }
                    if st.cursor >= st.queue.len() {
                        let _ = self
                            .work
                            .wait_timeout(st, Duration::from_millis(200))
                            .unwrap_or_else(|p| p.into_inner());
                    }
                }
                Err(e) => {
                    tracing::warn!(remote = %self.remote.location(), error = %e, "journal upload failed; retrying");
                    let stop = {
                        let mut st = self.lock();
                        if st.last_error.is_none() {
                            st.last_error = Some((e.to_string(), Instant::now()));
                        } else if let Some(le) = st.last_error.as_mut() {
                            le.0 = e.to_string();
                        }
                        st.shutdown
                    };
                    up.reset(&self);
                    if stop {
                        break;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        up.close_all(&self);
    }

    /// Uploads the next queued item. Ok(false): nothing to do.
    pub(super) fn step(&self, up: &mut Uploader) -> Result<bool> {
        let item = {
            let st = self.lock();
            match st.queue.get(st.cursor) {
                Some(i) => i.clone(),
                None => return Ok(false),
            }
        };
        match item {
            Item::Create { name, id } => {
                if let std::collections::hash_map::Entry::Vacant(slot) = up.open.entry(name) {
                    let name = slot.key();
                    let w = match self.remote.create(name) {
                        Ok(w) => (w, 0),
                        // Created before an interruption (maybe still open): resume it.
                        Err(e) => match self.remote.open_append(name) {
                            Ok(w) => w,
                            Err(Error::NotFound(_)) => return Err(e),
                            Err(e2) => return Err(e2),
                        },
                    };
                    slot.insert(UpObj::new(w, id));
                }
            }
            Item::Append {
                name,
                id,
                off,
                data,
            } => {
                if !up.open.contains_key(&name) {
                    let w = self.remote.open_append(&name)?;
                    up.open.insert(name.clone(), UpObj::new(w, id));
                }
                let Some(o) = up.open.get_mut(&name) else {
                    return Err(Error::Invalid("uploader lost a writer".into()));
                };
                if id != 0 {
                    o.id = id;
                }
                let end = off + data.len;
                if o.len < off {
                    return Err(Error::corrupt(
                        self.remote.location(),
                        name,
                        o.len,
                        format!("remote object ends at {} but the journal continues it at {off}: data missing", o.len),
                    ));
                }
                if end > o.len {
                    let skip = o.len - off;
                    let mut buf = vec![0u8; (data.len - skip) as usize];
                    data.file
                        .read_exact_at(&mut buf, data.file_off + skip)
                        .map_err(|e| io_err("read journal", &self.dir, e))?;
                    o.w.append(&buf)?;
                    o.len = end;
                    o.dirty = true;
                }
            }
            Item::Close { name, id } => {
                if let Some(mut o) = up.open.remove(&name) {
                    if o.dirty {
                        o.w.sync()?;
                    }
                    // Closed for sure before the remote serves its reads (an error: the
                    // appends are retried, skipped by length, and the close again).
                    o.w.finish()?;
                    let len = o.len;
                    drop(o);
                    self.publish(&name, id, len);
                }
            }
            Item::Delete { name, at } => {
                // Everything before the delete must be durable, and replay must start at it.
                up.sync_all()?;
                self.pop_done();
                self.write_progress(at)?;
                if let Some(o) = up.open.remove(&name) {
                    drop(o);
                }
                match self.remote.delete(&name) {
                    Ok(()) | Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Item::Rotate { file_no } => {
                // Every object the file holds data of is durable and closed on the remote
                // before the file goes: so an object the journal holds nothing of is closed
                // (what opening after a crash relies on). An error: retried from the file's
                // first item.
                up.finish_all(self)?;
                let mut st = self.lock();
                st.cursor += 1;
                let c = st.cursor;
                st.queue.drain(..c);
                st.cursor = 0;
                if let Some(jf) = st.files.remove(&file_no) {
                    st.journal_bytes = st.journal_bytes.saturating_sub(jf.size);
                }
                st.last_error = None;
                drop(st);
                let path = self.file_path(file_no);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("delete journal", &path, e)),
                }
                self.room.notify_all();
                return Ok(true);
            }
        }
        self.lock().cursor += 1;
        Ok(true)
    }

    /// Items before the cursor are durable on the remote: drop them from the queue.
    pub(super) fn pop_done(&self) {
        let mut st = self.lock();
        let c = st.cursor;
        st.queue.drain(..c);
        st.cursor = 0;
    }

    /// The remote now serves `len` bytes of this incarnation of `name`.
    pub(super) fn publish(&self, name: &str, id: u64, len: u64) {
        let mut st = self.lock();
        if let Some(o) = st.objects.get_mut(name) {
            if o.id == id && len > o.remote_len {
                o.remote_len = len.min(o.len);
                let keep = o.chunks.split_off(&o.remote_len);
                let mut below = std::mem::replace(&mut o.chunks, keep);
                // A chunk straddling the new remote length is still needed.
                if let Some((&k, c)) = below.iter().next_back() {
                    if k + c.len > o.remote_len {
                        o.chunks.insert(k, c.clone());
                    }
                }
                below.clear();
            }
        }
    }
}

struct UpObj {
    w: Box<dyn ObjectWriter>,
    id: u64,
    len: u64,
    dirty: bool,
}

impl UpObj {
    fn new((w, len): (Box<dyn ObjectWriter>, u64), id: u64) -> Self {
        UpObj {
            w,
            id,
            len,
            dirty: false,
        }
    }
}

#[derive(Default)]
pub(super) struct Uploader {
    open: HashMap<String, UpObj>,
}

impl Uploader {
    pub(super) fn sync_all(&mut self) -> Result<()> {
        for o in self.open.values_mut() {
            if o.dirty {
                o.w.sync()?;
                o.dirty = false;
            }
        }
        Ok(())
    }

    /// After a failure: forget the writers (their state is unknown) and start again from the
    /// first item not known durable; replay of what is already there is skipped by length.
    pub(super) fn reset(&mut self, inner: &Inner) {
        self.open.clear();
        inner.lock().cursor = 0;
    }

    /// Makes every open object durable and closes it; each closed one is published.
    pub(super) fn finish_all(&mut self, inner: &Inner) -> Result<()> {
        self.sync_all()?;
        let names: Vec<String> = self.open.keys().cloned().collect();
        for name in names {
            if let Some(mut o) = self.open.remove(&name) {
                o.w.finish()?;
                inner.publish(&name, o.id, o.len);
            }
        }
        Ok(())
    }

    pub(super) fn close_all(&mut self, inner: &Inner) {
        if let Err(e) = self.finish_all(inner) {
            tracing::warn!(remote = %inner.remote.location(), error = %e, "closing remote objects at stop failed; the next opener closes them");
        }
    }
}
